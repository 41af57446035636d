"""The airbench96 recipe (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU"), one recipe at two scales.

A whitened 2x2 first convolution (patch whitening from training-data statistics, frozen), conv groups (conv,
maxpool, BatchNorm, GELU, then two more convs with a residual), a scaled linear head; SGD with Nesterov momentum
in decoupled form, lookahead (an EMA of the weights pulled back into the net), label smoothing, flip + translate +
cutout augmentation, and test-time augmentation in predict().

The scale is declared apart: ``scale_full.py`` (CIFAR-10 3x32x32, three conv groups, a GPU) and ``scale_mini.py``
(8x8 digits, two groups, one CPU thread) hold the image shape, the widths, the schedule length, the augmentation
strength and the CUDA settings. train(), predict() and prepare() bind ctx.variant's scale first (use_scale);
every other line of this file is shared by both scales, so a change kept at one scale is the same code at the
other (``autoresearch recheck`` runs it there).

train(ctx) trains one seed and saves the weights to ctx.out_dir; predict(ctx) runs test-time
augmentation on the unlabeled test images and writes ctx.out_dir/predictions.npy. Knobs live in the
marked regions (arch, opt, aug, loss, reg) here and in the scale files; the data handling outside them is fixed.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


def use_scale(variant: str) -> None:
    """Bind ``scale_<variant>.py`` next to this file (IMAGE_SHAPE, WIDTHS, EPOCHS, ... and the CUDA settings) to
    this module's names: the recipe's only per-variant part."""
    path = Path(__file__).with_name(f"scale_{variant}.py")
    if not path.is_file():
        raise FileNotFoundError(f"this recipe declares no '{variant}' scale ({path.name} is missing)")
    spec = importlib.util.spec_from_file_location(f"scale_{variant}", path)
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    globals().update({k: v for k, v in vars(scale).items() if not k.startswith("_")})


# autoresearch: begin arch
WHITEN_KERNEL = 2  # range: 2..3
WHITEN_EPS = 0.0005  # range: 0.00001..0.01
RESIDUAL = True


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a fixed unit scale: only the shift is learned."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, 1e-12, BN_MOMENTUM)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 'same' conv whose first filters start as identity (dirac) maps."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(c_in, c_out)])


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1, self.norm1 = Conv(c_in, c_out), BatchNorm(c_out)
        self.conv2, self.norm2 = Conv(c_out, c_out), BatchNorm(c_out)
        self.conv3, self.norm3 = Conv(c_out, c_out), BatchNorm(c_out)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        skip = x
        x = self.act(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        if RESIDUAL:
            x = x + skip
        return self.act(x)


class Net(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        k = WHITEN_KERNEL
        self.whiten = nn.Conv2d(c_in, 2 * c_in * k * k, k)
        self.whiten.weight.requires_grad = False
        nn.init.zeros_(self.whiten.bias)
        widths = (2 * c_in * k * k, *WIDTHS)  # one conv group per width of the scale
        self.groups = nn.Sequential(*[ConvGroup(a, b) for a, b in zip(widths, widths[1:])])
        self.dropout = nn.Dropout(DROPOUT)
        self.head = nn.Linear(WIDTHS[-1], NUM_CLASSES, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        x = torch.amax(x, dim=(2, 3))
        return self.head(self.dropout(x)) * LOGIT_SCALE


def make_net(c_in: int, device: str) -> nn.Module:
    net = Net(c_in).to(device)
    if CHANNELS_LAST and device == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


def init_whitening(net: nn.Module, images: torch.Tensor) -> None:
    """Set the first conv to the eigenbasis of the training images' patch covariance (and its negation)."""
    w = net.whiten.weight
    c, k = w.shape[1], w.shape[2]
    x = images[:WHITEN_IMAGES].float()
    patches = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    cov = patches.T @ patches / len(patches)
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    filters = (evecs.T / torch.sqrt(evals.clamp_min(0) + WHITEN_EPS)[:, None]).reshape(c * k * k, c, k, k)
    with torch.no_grad():
        w.copy_(torch.cat([filters, -filters]).to(w.dtype))


def autocast(device: str) -> Any:
    if device != "cuda" or AMP_DTYPE == "float32":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=getattr(torch, AMP_DTYPE))


def maybe_compile(net: nn.Module) -> nn.Module:
    return torch.compile(net, mode=COMPILE_MODE) if COMPILE else net
# autoresearch: end arch

# autoresearch: begin opt
MOMENTUM = 0.85  # range: 0.5..0.95
BIAS_LR_SCALE = 64.0  # range: 1..128
WARMUP_FRAC = 0.1  # range: 0..0.3
WARMUP_START = 0.2  # range: 0..1
LOOKAHEAD = True
LOOKAHEAD_EVERY = 5  # range: 1..20
LOOKAHEAD_DECAY = 0.7738  # range: 0.5..0.99
LOOKAHEAD_POWER = 3.0  # range: 1..6
WHITEN_BIAS_EPOCHS = 3  # range: 0..10


class NesterovSGD:
    """SGD with Nesterov momentum and coupled weight decay: torch.optim.SGD's update rule, written out.

    (torch.optim imports torch's compiler stack on first use, seconds of CPU inside the train timer.)
    ``step(factor)`` scales every group's learning rate by the schedule's ``factor``.
    """

    def __init__(self, groups: list[dict[str, Any]], momentum: float) -> None:
        self.groups, self.momentum = groups, momentum
        for g in groups:
            g["bufs"] = [None] * len(g["params"])

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, factor: float = 1.0) -> None:
        m = self.momentum
        for g in self.groups:
            live = [i for i, p in enumerate(g["params"]) if p.grad is not None]  # frozen this epoch: skipped
            if not live:
                continue
            params = [g["params"][i] for i in live]
            d = torch._foreach_add([p.grad for p in params], params, alpha=g["weight_decay"])
            for i, di in zip(live, d):
                if g["bufs"][i] is None:
                    g["bufs"][i] = di.clone()
                else:
                    g["bufs"][i].mul_(m).add_(di)
            torch._foreach_add_(d, [g["bufs"][i] for i in live], alpha=m)
            torch._foreach_add_(params, d, alpha=-g["lr"] * factor)


def make_optimizer(net: nn.Module) -> NesterovSGD:
    """Nesterov SGD in decoupled form: LR is per 1024 examples of a summed loss, independent of momentum."""
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr = LR / kilostep
    wd = WEIGHT_DECAY * BATCH_SIZE / kilostep
    lr_bias = lr * BIAS_LR_SCALE
    norm_ids = {id(m.bias) for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    biases = [p for p in net.parameters() if id(p) in norm_ids and p.requires_grad]
    others = [p for p in net.parameters() if id(p) not in norm_ids and p.requires_grad]
    groups = [dict(params=biases, lr=lr_bias, weight_decay=wd / lr_bias),
              dict(params=others, lr=lr, weight_decay=wd / lr)]
    return NesterovSGD(groups, MOMENTUM)


def lr_factor(step: int, total: int) -> float:
    warm = int(total * WARMUP_FRAC)
    if step < warm:
        return WARMUP_START + (1 - WARMUP_START) * step / warm
    return (total - step) / max(1, total - warm)


class Lookahead:
    """An EMA of all float state (weights and BN statistics), copied back into the net on each update."""

    def __init__(self, net: nn.Module) -> None:
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    def update(self, net: nn.Module, decay: float) -> None:
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if k in self.state:
                    self.state[k].lerp_(v, 1 - decay)
                    v.copy_(self.state[k])


def fit(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str) -> None:
    """Train ``net`` in place on normalized ``images``."""
    steps_per_epoch = len(images) // BATCH_SIZE
    step, total = 0, math.ceil(steps_per_epoch * EPOCHS)
    opt = make_optimizer(net)
    model = maybe_compile(net)
    ema = Lookahead(net) if LOOKAHEAD else None
    for epoch in range(math.ceil(EPOCHS)):
        net.whiten.bias.requires_grad = epoch < WHITEN_BIAS_EPOCHS
        net.train()
        x_epoch = augment(images, epoch)
        order = torch.randperm(len(images), device=images.device)
        for i in range(steps_per_epoch):
            idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
            with autocast(device):
                loss = loss_fn(model(x_epoch[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step(lr_factor(step, total))
            step += 1
            if ema is not None and step % LOOKAHEAD_EVERY == 0:
                ema.update(net, LOOKAHEAD_DECAY * (step / total) ** LOOKAHEAD_POWER)
            if step >= total:
                break
        if step >= total:
            break
    if ema is not None:
        ema.update(net, 1.0)
# autoresearch: end opt

# autoresearch: begin loss
LABEL_SMOOTHING = 0.2  # range: 0..0.4
LOGIT_SCALE = 0.1111  # range: 0.03..0.5


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=LABEL_SMOOTHING, reduction="sum")
# autoresearch: end loss

# autoresearch: begin reg
WEIGHT_DECAY = 0.012  # range: 0..0.05
BN_MOMENTUM = 0.1  # range: 0.01..0.6
DROPOUT = 0.0  # range: 0..0.5
# autoresearch: end reg

# autoresearch: begin aug
TTA_TRANSLATE = True


def augment(images: torch.Tensor, epoch: int) -> torch.Tensor:
    """A freshly augmented copy of the whole training set for one epoch."""
    x = images
    n, _, h, w = x.shape
    if FLIP:
        mask = torch.rand(n, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if TRANSLATE > 0:
        r = TRANSLATE
        padded = F.pad(x, (r, r, r, r), mode="reflect")
        dy = torch.randint(0, 2 * r + 1, (n, 1, 1), device=x.device)
        dx = torch.randint(0, 2 * r + 1, (n, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device)[None, :, None] + dy
        cols = torch.arange(w, device=x.device)[None, None, :] + dx
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if CUTOUT > 0:
        s = min(CUTOUT, h, w)
        top = torch.randint(0, h - s + 1, (n, 1, 1), device=x.device)
        left = torch.randint(0, w - s + 1, (n, 1, 1), device=x.device)
        ys = torch.arange(h, device=x.device)[None, :, None]
        xs = torch.arange(w, device=x.device)[None, None, :]
        hole = (ys >= top) & (ys < top + s) & (xs >= left) & (xs < left + s)
        x = x.masked_fill(hole[:, None], 0.0)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda and CHANNELS_LAST else x.contiguous()


def tta_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits averaged over views: mirror, and one-pixel shifts up-left and down-right."""

    def views(v: torch.Tensor) -> torch.Tensor:
        out = model(v).float()
        return 0.5 * out + 0.5 * model(v.flip(-1)).float() if TTA_MIRROR else out

    logits = views(x)
    if TTA_TRANSLATE:
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = (views(padded[..., 0:h, 0:w]) + views(padded[..., 2:h + 2, 2:w + 2])) / 2
        logits = 0.5 * logits + 0.5 * shifted
    return logits
# autoresearch: end aug


# ---- data handling (fixed: not part of any specialist's surface) ----

_DATA: dict[str, Any] = {}


def _load(data_dir: Path, name: str) -> np.ndarray:
    path = Path(data_dir) / f"{name}.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the task's stage() should have written it")
    return np.load(path)


def _train_tensors(data_dir: Path, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalized training images and labels on ``device``, plus the per-channel mean/std (cached per process)."""
    key = f"{data_dir}:{device}"
    if key not in _DATA:
        x = torch.from_numpy(_load(data_dir, "train_images")).to(device).float() / 255
        y = torch.from_numpy(_load(data_dir, "train_labels")).to(device).long()
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        _DATA[key] = ((x - mean) / std, y, mean, std)
    return _DATA[key]


def _device(ctx: Any) -> str:
    return "cuda" if ctx.device == "cuda" and torch.cuda.is_available() else "cpu"


def train(ctx: Any) -> None:
    use_scale(ctx.variant)
    device = _device(ctx)
    torch.manual_seed(ctx.seed)
    np.random.seed(ctx.seed)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    images, labels, mean, std = _train_tensors(ctx.data_dir, device)
    net = make_net(images.shape[1], device)
    init_whitening(net, images)
    fit(net, images, labels, device)
    torch.save({"state": {k: v.cpu() for k, v in net.state_dict().items()}, "mean": mean.cpu(), "std": std.cpu()},
               ctx.out_dir / "model.pt")
    ctx.log(device=device, variant=ctx.variant, epochs=EPOCHS, widths=list(WIDTHS))


def predict(ctx: Any) -> None:
    use_scale(ctx.variant)
    device = _device(ctx)
    saved = torch.load(ctx.out_dir / "model.pt", map_location=device)
    x = torch.from_numpy(_load(ctx.data_dir, "test_images")).to(device).float() / 255
    x = (x - saved["mean"].to(device)) / saved["std"].to(device)
    net = make_net(x.shape[1], device)
    net.load_state_dict(saved["state"])
    net.eval()  # eager: TTA on the test set is cheap, and a compile here would cost more than it saves
    if device == "cuda" and CHANNELS_LAST:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device):
        logits = torch.cat([tta_logits(net, xb) for xb in x.split(EVAL_BATCH)])
    np.save(ctx.out_dir / "predictions.npy", logits.argmax(1).cpu().numpy().astype(np.int64))


def prepare(ctx: Any) -> None:
    """Untimed warm-up: compile the training graphs on random tensors so the cache in ctx.cache_dir is hot."""
    use_scale(ctx.variant)
    device = _device(ctx)
    if not COMPILE:
        return
    torch.manual_seed(0)
    x = torch.randn(BATCH_SIZE, *IMAGE_SHAPE, device=device)
    y = torch.randint(0, NUM_CLASSES, (BATCH_SIZE,), device=device)
    net = make_net(IMAGE_SHAPE[0], device)
    init_whitening(net, x)
    opt = make_optimizer(net)
    model = maybe_compile(net)
    for trainable_bias in (True, False):
        net.whiten.bias.requires_grad = trainable_bias
        net.train()
        for _ in range(2):
            with autocast(device):
                loss = loss_fn(model(augment(x, 0)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
