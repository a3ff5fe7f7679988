"""What a run is, as frozen dataclasses, and the presets that fill them in.

The model's shape is atomic.GPTConfig (vocab_size comes from the data); everything about how it is trained is
TrainConfig; RunSettings gathers those with the data, the tokenizer and the engine. A preset names a data set, a
model and a TrainConfig that were measured to do something (see README); any flag given on the command line
overrides the preset's value (microgpt/settings.py)."""
from dataclasses import asdict, dataclass, field, fields

from microgpt.atomic import GPTConfig


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 1  # documents (lines) or windows (stream) per step
    lr: float = 0.01  # the peak learning rate
    schedule: str = "linear"  # linear | cosine (microgpt/schedule.py)
    warmup: int = 0  # steps of linear warmup
    min_lr_ratio: float = 0.0  # where cosine ends, as a fraction of lr
    weight_decay: float = 0.0  # AdamW's decoupled decay
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 = off
    beta1: float = 0.85
    beta2: float = 0.99
    eps: float = 1e-8
    seed: int = 42
    init_std: float = 0.08  # the reference draws every weight from N(0, 0.08); wider models want less
    dropout: float = 0.0  # the probability of zeroing an activation in training (microgpt/dropout.py); 0 = off


DTYPES = ("float64", "float32", "bfloat16")  # what a run can compute in (each engine offers some)
DEVICES, ATTENTIONS = ("cpu", "cuda", "mps"), ("manual", "sdpa")  # the torch engine's --device and --attention
ENGINE_OPTIONS = {"device": None, "attention": None, "compile": False}  # None, False: the default
MODEL_FIELDS = ("n_layer", "n_embd", "n_head", "block_size")
REFERENCE_MODEL = {name: getattr(GPTConfig(), name) for name in MODEL_FIELDS}  # the atomic file's defaults
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides the numbers a run computes (a resume must not change any of it), and the few things
    that do not (engine, how often to evaluate and log)."""
    data: str = "names"
    format: str = None  # lines | stream | None: detect
    model: dict = field(default_factory=lambda: dict(REFERENCE_MODEL))
    train: TrainConfig = field(default_factory=TrainConfig)
    dtype: str = "float64"
    tokenizer: str = "char"  # char | bpe
    vocab_size: int = 512  # for bpe: 256 bytes + merges + BOS
    presplit: bool = True  # for bpe: no merge across words (microgpt/bpe.py)
    engine: str = None  # None: the fastest installed
    engine_options: dict = field(default_factory=lambda: dict(ENGINE_OPTIONS))  # the torch engine's
    eval_every: int = 100
    eval_windows: int = 256  # held-out windows of a stream at intermediate evaluations (all at the end)
    log_every: int = 100
    health: bool = False  # print a health line at every logged step (it is always in the log)
    ablate: tuple = ()  # the pieces taken out of the model (microgpt/ablations.py), in the order of ABLATIONS

    def fixed(self):
        """The settings a resumed run must share with the run it continues, as plain data."""
        return {"data": self.data, "format": self.format, "model": self.model, "train": asdict(self.train),
                "dtype": self.dtype, "tokenizer": self.tokenizer, "vocab_size": self.vocab_size,
                "presplit": self.presplit, "ablate": list(self.ablate)}

    def tokenizer_spec(self):
        return ("char",) if self.tokenizer == "char" else ("bpe", self.vocab_size, self.presplit)


PRESETS = {
    "reference": {  # the reference run of microgpt/atomic.py, on every engine
        "data": "names",
        "model": REFERENCE_MODEL,
        "train": TrainConfig(),
        "eval_every": 100,
    },
    "names": {  # held-out loss under 1.90 in under 10 minutes on a 2-core CPU (README)
        "data": "names",
        "model": dict(n_layer=6, n_embd=96, n_head=4, block_size=16),
        "train": TrainConfig(steps=14000, batch_size=64, lr=3e-3, schedule="linear", warmup=200,
                             weight_decay=0.2, grad_clip=1.0, beta1=0.9, beta2=0.99, init_std=0.065, dropout=0.1),
        "eval_every": 3500,
        "dtype": "float32",
    },
    "shakespeare": {  # held-out loss under 1.80 in less time than nanoGPT's CPU recipe, beside it (README)
        "data": "shakespeare",
        "model": dict(n_layer=4, n_embd=128, n_head=4, block_size=64),
        "train": TrainConfig(steps=1200, batch_size=16, lr=4e-3, schedule="linear", warmup=100,
                             weight_decay=0.1, grad_clip=1.0, beta1=0.9, beta2=0.99, init_std=0.02),
        "eval_every": 600,
        "dtype": "float32",
    },
    "shakespeare-gpu": {  # nanoGPT's shakespeare_char recipe, for one GPU: its size, schedule and dropout
        "data": "shakespeare",
        "model": dict(n_layer=6, n_embd=384, n_head=6, block_size=256),
        "train": TrainConfig(steps=5000, batch_size=64, lr=1e-3, schedule="cosine", warmup=100,
                             min_lr_ratio=0.1, weight_decay=0.1, grad_clip=1.0, beta1=0.9, beta2=0.99,
                             init_std=0.02, dropout=0.2),
        "eval_every": 500,
        "dtype": "bfloat16",
    },
}
