import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oserve.common.errors import ConfigError  # noqa: E402
from oserve.forecast.lstm import LSTMForecaster, LSTMParams  # noqa: E402

TINY = LSTMParams(lookback=6, hidden=8, epochs=40, patience=40, seed=1)


def _series(n=160, k=2):
    t = np.arange(n)
    return np.column_stack([5 + 3 * np.sin(2 * np.pi * t / 40 + p) for p in range(k)])


def test_lstm_trains_reproducibly_and_predicts_non_negative_rates():
    rates = _series()
    a = LSTMForecaster(TINY).fit(rates[:120])
    b = LSTMForecaster(TINY).fit(rates[:120])
    pa = a.predict_batch(rates, range(120, 160))
    assert pa.shape == (40, 2) and np.all(pa >= 0)
    assert np.allclose(pa, b.predict_batch(rates, range(120, 160)))
    assert np.allclose(a.predict(rates[:130]), pa[10])
    # the global torch generator is not touched by training
    state = torch.random.get_rng_state()
    LSTMForecaster(TINY).fit(rates[:120])
    assert torch.equal(state, torch.random.get_rng_state())


def test_lstm_save_load_round_trip(tmp_path):
    rates = _series()
    model = LSTMForecaster(TINY).fit(rates[:120])
    path = tmp_path / "f.pt"
    model.save(path, {"window_s": 10.0})
    loaded, meta = LSTMForecaster.load(path)
    assert meta == {"window_s": 10.0}
    assert np.allclose(loaded.predict(rates[:150]), model.predict(rates[:150]))


def test_lstm_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        LSTMForecaster(TINY).predict(_series())
    with pytest.raises(ConfigError):
        LSTMForecaster(TINY).fit(_series(n=5))
    with pytest.raises(ConfigError):
        LSTMForecaster.load(tmp_path / "missing.pt")
