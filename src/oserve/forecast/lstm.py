"""Per-type LSTM forecaster (PyTorch, CPU).

One small LSTM per request type reads the last ``lookback`` windows of that type's rate and of the total
rate, both divided by the type's (resp. total) mean training rate, and predicts the change of the type's
scaled rate from the last window to the next (with ``residual=False``, the level itself: that variant
extrapolates badly once the rates leave the training range, as on a drifting synthetic day); the loss
is the mean squared error of the rate, the quantity RRMSE scores. The last ``val_frac`` of the
training windows is held out for early stopping. Training runs under a forked torch RNG seeded from
``seed``, so it is reproducible and leaves torch's global generator untouched. torch is imported only
here: the rest of oserve never needs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from oserve.common.errors import ConfigError


def _torch():
    try:
        import torch
    except ModuleNotFoundError:
        raise ConfigError("the LSTM forecaster needs PyTorch: pip install -e '.[forecast]'") from None
    return torch


@dataclass(frozen=True)
class LSTMParams:
    lookback: int = 12
    hidden: int = 32
    epochs: int = 300
    learning_rate: float = 0.01
    val_frac: float = 0.2
    patience: int = 40
    seed: int = 0
    residual: bool = True  # predict the change from the last window instead of the level
    num_threads: int = 1  # tiny models: more threads only add overhead (restored after training)


@dataclass(frozen=True)
class LSTMForecaster:
    params: LSTMParams = LSTMParams()
    name: str = "lstm"
    scale: tuple[float, ...] = ()  # per type: mean training rate; the last entry is the total's
    models: tuple = field(default=(), compare=False, repr=False)

    @property
    def is_fitted(self) -> bool:
        return bool(self.models)

    def fit(self, train_rps: np.ndarray) -> LSTMForecaster:
        torch = _torch()
        train = np.asarray(train_rps, dtype=np.float64)
        if train.ndim != 2 or train.shape[0] < self.params.lookback + 4:
            raise ConfigError(f"LSTM training needs >= {self.params.lookback + 4} windows, "
                              f"got {train.shape[0]}")
        scale = _scales(train)
        models = []
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(self.params.num_threads)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.params.seed)
                for t in range(train.shape[1]):
                    x, y = _samples(train, t, scale, self.params.lookback, self.params.residual)
                    models.append(_train_one(torch, x, y, self.params))
        finally:
            torch.set_num_threads(threads)
        return replace(self, scale=tuple(float(s) for s in scale), models=tuple(models))

    def predict(self, history_rps: np.ndarray) -> np.ndarray:
        history = np.asarray(history_rps, dtype=np.float64)
        return self.predict_batch(history, [history.shape[0]])[0]

    def predict_batch(self, rates_rps: np.ndarray, origins) -> np.ndarray:
        """Predictions for window ``o`` from ``rates_rps[:o]``, for every origin ``o``."""
        if not self.is_fitted:
            raise ConfigError("the LSTM forecaster is not trained: fit it or load a saved model")
        torch = _torch()
        rates = np.asarray(rates_rps, dtype=np.float64)
        scale = np.asarray(self.scale)
        origins = list(origins)
        out = np.zeros((len(origins), rates.shape[1]))
        threads = torch.get_num_threads()
        # one intra-op thread, as in training: on a busy machine extra threads spin and a call that takes
        # ~1 ms alone took hundreds (measured: 364 ms per call at load average 29 on 2 cores)
        torch.set_num_threads(self.params.num_threads)
        try:
            with torch.no_grad():
                for t, model in enumerate(self.models):
                    feats = _features(rates, t, scale)
                    x = np.stack([_window(feats, o, self.params.lookback) for o in origins])
                    y = model(torch.as_tensor(x, dtype=torch.float32)).numpy()[:, 0]
                    level = x[:, -1, 0] + y if self.params.residual else y
                    out[:, t] = np.maximum(0.0, level * scale[t])
        finally:
            torch.set_num_threads(threads)
        return out

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        torch = _torch()
        torch.save({"format": "oserve-lstm-forecaster/1", "params": asdict(self.params),
                    "scale": list(self.scale), "meta": meta or {},
                    "state_dicts": [m.state_dict() for m in self.models]}, str(path))

    @staticmethod
    def load(path: str | Path) -> tuple[LSTMForecaster, dict]:
        torch = _torch()
        try:
            blob = torch.load(str(path), weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"forecaster file '{path}' does not exist") from None
        if not isinstance(blob, dict) or blob.get("format") != "oserve-lstm-forecaster/1":
            raise ConfigError(f"'{path}' is not an oserve LSTM forecaster file")
        params = LSTMParams(**blob["params"])
        models = []
        for state in blob["state_dicts"]:
            model = _make_model(torch, params.hidden)
            model.load_state_dict(state)
            model.eval()
            models.append(model)
        return LSTMForecaster(params, scale=tuple(blob["scale"]), models=tuple(models)), blob["meta"]


def _scales(train: np.ndarray) -> np.ndarray:
    per_type = train.mean(axis=0)
    total = train.sum(axis=1).mean()
    return np.maximum(np.append(per_type, total), 1e-6)


def _features(rates: np.ndarray, t: int, scale: np.ndarray) -> np.ndarray:
    return np.column_stack([rates[:, t] / scale[t], rates.sum(axis=1) / scale[-1]])


def _window(feats: np.ndarray, origin: int, lookback: int) -> np.ndarray:
    """The ``lookback`` feature rows before ``origin``, left-padded with the first row."""
    if origin < 1:
        raise ConfigError("a forecast needs a history of at least one window")
    rows = feats[max(0, origin - lookback):origin]
    if len(rows) < lookback:
        rows = np.vstack([np.repeat(rows[:1], lookback - len(rows), axis=0), rows])
    return rows


def _samples(train: np.ndarray, t: int, scale: np.ndarray, lookback: int, residual: bool):
    feats = _features(train, t, scale)
    origins = range(lookback, len(train))
    x = np.stack([_window(feats, o, lookback) for o in origins])
    y = np.array([feats[o, 0] - (feats[o - 1, 0] if residual else 0.0) for o in origins])
    return x, y


def _make_model(torch, hidden: int):
    nn = torch.nn

    class _Net(torch.nn.Module):  # torch is passed in (lazy import), so the base is dynamic
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(2, hidden, batch_first=True)
            self.head = nn.Linear(hidden, 1)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    return _Net()


def _train_one(torch, x: np.ndarray, y: np.ndarray, params: LSTMParams):
    num_val = max(1, int(len(x) * params.val_frac))
    xt = torch.as_tensor(x[:-num_val], dtype=torch.float32)
    yt = torch.as_tensor(y[:-num_val, None], dtype=torch.float32)
    xv = torch.as_tensor(x[-num_val:], dtype=torch.float32)
    yv = torch.as_tensor(y[-num_val:, None], dtype=torch.float32)
    model = _make_model(torch, params.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    best_val, best_state, since_best = float("inf"), None, 0
    for _ in range(params.epochs):
        model.train()
        opt.zero_grad()
        loss = torch.mean((model(xt) - yt) ** 2)
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            val = float(torch.mean((model(xv) - yv) ** 2))
        if val < best_val - 1e-9:
            best_val, since_best = val, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= params.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model
