import pytest

from oserve.common.errors import ConfigError, InputFormatError
from oserve.costmodel.catalog import load_gpus, load_models, parse_cluster

REQUIRED = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "llama-30b",
            "opt-30b", "opt-66b", "smollm2-135m", "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-72b"]


@pytest.mark.parametrize("name, billions", [("llama-2-7b", 6.7), ("llama-2-70b", 69.0), ("opt-66b", 66.2),
                                            ("llama-30b", 32.5), ("llama-3-8b", 8.0),
                                            ("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.6),
                                            ("qwen2.5-72b", 72.7)])
def test_parameter_counts_match_published_sizes(name, billions):
    assert load_models().get(name).num_params / 1e9 == pytest.approx(billions, rel=0.03)


def test_tied_embedding_is_counted_once():
    # Hugging Face counts 134,515,008 parameters in SmolLM2-135M-Instruct (lm_head tied to the
    # embedding); counting the vocabulary matrix twice gave 162.8M, 21% too many weight bytes.
    smollm = load_models().get("smollm2-135m")
    assert smollm.tie_word_embeddings
    assert smollm.num_params == pytest.approx(134_515_008, rel=1e-3)


def test_required_catalog_entries_exist():
    models = load_models()
    for name in REQUIRED:
        models.get(name)
    assert load_models().get("llama-30b").hidden_size == 6656
    assert load_models().get("meta-llama/Llama-3.1-70B-Instruct").max_context_tokens == 131072
    assert load_models().get("qwen2.5-72b").max_context_tokens == 32768
    gpus = load_gpus()
    for name in ["A100-40GB", "A100-80GB", "H100-80GB", "H200", "L40S", "L4"]:
        assert gpus.get(name).bf16_tflops > 0
    assert gpus.get("h100") is gpus.get("H100-80GB")


def test_user_catalog_extends_and_errors_name_the_field(tmp_path):
    good = tmp_path / "m.yaml"
    good.write_text("models:\n  - {name: tiny, num_layers: 2, hidden_size: 64, num_heads: 4, "
                    "num_kv_heads: 4, ffn_size: 128, gated_mlp: true, vocab_size: 100}\n")
    assert load_models([str(good)]).get("tiny").num_layers == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - {name: broken, num_layers: -1, hidden_size: 64, num_heads: 4, "
                   "num_kv_heads: 4, ffn_size: 128, gated_mlp: true, vocab_size: 100}\n")
    with pytest.raises(InputFormatError, match=r"models\[0\] \(broken\)\.num_layers"):
        load_models([str(bad)])
    typo = tmp_path / "typo.yaml"
    typo.write_text("models:\n  - {name: t, num_layers: 2, hidden: 64}\n")
    with pytest.raises(InputFormatError):
        load_models([str(typo)])


def test_cluster_short_form_and_mixed_types():
    c = parse_cluster("2x8xH100+1x4xA100-80GB")
    assert c.num_gpus == 20 and c.gpu_types == ("H100-80GB", "A100-80GB")
    assert [g.gpu_id for g in c.gpus] == list(range(20))
    assert c.nodes[2] == (16, 17, 18, 19)
    with pytest.raises(ConfigError, match="expected NODESxGPUS"):
        parse_cluster("8xH100")
    with pytest.raises(ConfigError, match="unknown GPU type"):
        parse_cluster("1x8xB300")


def test_cluster_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inter_node_gbps: 25\nnodes:\n  - {count: 2, gpus_per_node: 4, gpu: L40S}\n")
    c = parse_cluster(str(f))
    assert c.num_gpus == 8 and c.inter_node_gbps == 25
