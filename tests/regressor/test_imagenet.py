"""ImageNet initialisation: a torchvision-named PyTorch ResNet-50 and the converted Flax model agree."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitting.shards import ShardDataset
from regressor.imagenet import convert_torch_resnet, imagenet_variables, load_torch_state_dict
from regressor.models import IMAGENET_MEAN, IMAGENET_STD, RESNET50_STAGES, ResNetRegressor
from regressor.train import train

torch = pytest.importorskip("torch")
nn = torch.nn


# ---------------------------------------------------------------- the oracle
# torchvision.models.resnet's Bottleneck and ResNet (v1.5, stride on the 3×3
# convolution), written out with the same module and parameter names, since
# torchvision itself is not installed here; `width` generalises the 64 base filters.


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers=RESNET50_STAGES, width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(width * 2**i, blocks, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        self.n_layers = len(layers)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        modules = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        modules += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.features(x))


def _random_resnet(layers=RESNET50_STAGES, width: int = 64, num_classes: int = 1000, seed: int = 0) -> ResNet:
    """Random weights and random batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ResNet(layers, width, num_classes)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                # bn3 / the projection's BN scaled down so 16 residual additions stay O(1).
                gain = 0.3 if name.endswith("bn3") or name.endswith("downsample.1") else 1.0
                module.weight.copy_(gain * (0.5 + torch.rand(n, generator=generator)))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(123)
            elif isinstance(module, nn.Linear):
                module.bias.copy_(0.1 * torch.randn(module.out_features, generator=generator))
    return model.eval()


def _torch_input(images: np.ndarray):
    """torchvision's preprocessing of RGB [0, 255] images: /255, ImageNet mean/std, NCHW."""
    x = (images.astype(np.float32) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def resnet50():
    """A random torchvision-named ResNet-50 (1000 classes) and its state dict as NumPy arrays."""
    model = _random_resnet()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, state


# --------------------------------------------------------------------- tests


def test_converted_resnet50_reproduces_pytorch_logits(resnet50):
    torch_model, state = resnet50
    flax_model = ResNetRegressor(n_outputs=1000)
    converted = convert_torch_resnet(state, flax_model)
    assert converted.head_converted
    assert all(k.endswith("num_batches_tracked") for k in converted.ignored_keys)
    assert len(converted.ignored_keys) == 53  # one counter per batch norm
    # 80 px: even sizes through the stem and pool (where "SAME" padding would differ
    # from torchvision's), odd ones in the last stages (5 → 3).
    images = np.random.default_rng(0).integers(0, 256, (2, 80, 80, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = torch_model(_torch_input(images)).numpy()
    logits = np.asarray(jax.jit(flax_model.apply)(converted.variables, images))
    assert logits.shape == (2, 1000)
    assert np.abs(expected).max() > 0.1  # a non-degenerate output
    error = _relative_error(logits, expected)
    print(f"ResNet-50 80x80: max |flax - torch| = {np.abs(logits - expected).max():.3g}, relative {error:.3g}")
    assert error < 1e-4, error


def test_converted_resnet50_reproduces_pytorch_logits_at_224(resnet50):
    torch_model, state = resnet50
    flax_model = ResNetRegressor(n_outputs=1000)
    variables = convert_torch_resnet(state, flax_model).variables
    images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = torch_model(_torch_input(images)).numpy()
    logits = np.asarray(jax.jit(flax_model.apply)(variables, images))
    error = _relative_error(logits, expected)
    print(f"ResNet-50 224x224: max |flax - torch| = {np.abs(logits - expected).max():.3g}, relative {error:.3g}")
    assert error < 1e-4, error


def test_regression_head_keeps_its_init_and_the_trunk_gives_pytorch_features(tmp_path):
    # A small torchvision-shaped ResNet (one block per stage, width 8) saved as a .pth file.
    torch_model = _random_resnet((1, 1, 1, 1), width=8, seed=3)
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in torch_model.state_dict().items()}}, path)
    loaded = load_torch_state_dict(path)
    assert set(loaded) == set(torch_model.state_dict())
    bias = np.linspace(-1, 1, 28, dtype=np.float32)
    flax_model = ResNetRegressor(n_outputs=28, stage_sizes=(1, 1, 1, 1), num_filters=8,
                                 head_bias_init=lambda key, shape, dtype=jnp.float32: jnp.asarray(bias, dtype))
    converted = imagenet_variables(path, flax_model)
    assert not converted.head_converted
    assert {"fc.weight", "fc.bias"} <= set(converted.ignored_keys)
    head = converted.variables["params"]["head"]
    assert np.array_equal(head["kernel"], np.zeros((256, 28))) and np.array_equal(head["bias"], bias)
    # The trunk's pooled features match PyTorch's: read them through an identity head.
    probe = ResNetRegressor(n_outputs=256, stage_sizes=(1, 1, 1, 1), num_filters=8)
    variables = {"params": {**converted.variables["params"],
                            "head": {"kernel": np.eye(256, dtype=np.float32), "bias": np.zeros(256, np.float32)}},
                 "batch_stats": converted.variables["batch_stats"]}
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = torch_model.features(_torch_input(images)).numpy()
    features = np.asarray(jax.jit(probe.apply)(variables, images))
    assert _relative_error(features, expected) < 1e-4
    # The regression model predicts its bias (zero kernel) from the converted trunk.
    assert np.allclose(np.asarray(jax.jit(flax_model.apply)(converted.variables, images)), bias)


def test_mismatched_state_dicts_are_refused_with_the_offending_keys(resnet50):
    _, state = resnet50
    model = ResNetRegressor(n_outputs=28)
    missing = {k: v for k, v in state.items() if k != "layer3.2.bn2.running_var"}
    with pytest.raises(ValueError, match=r"missing keys \['layer3.2.bn2.running_var'\]"):
        convert_torch_resnet(missing, model)
    extra = {**state, "layer5.0.conv1.weight": np.zeros((1, 1, 1, 1))}
    with pytest.raises(ValueError, match=r"unexpected keys \['layer5.0.conv1.weight'\]"):
        convert_torch_resnet(extra, model)
    wrong = {**state, "layer2.0.conv2.weight": np.zeros((128, 128, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"layer2.0.conv2.weight: \(128, 128, 1, 1\)"):
        convert_torch_resnet(wrong, model)
    # A ResNet-50 checkpoint does not fit a ResNet-18-sized trunk: every surplus block is named.
    small = ResNetRegressor(n_outputs=28, stage_sizes=(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"unexpected keys \[.*'layer1.2.bn1.bias'"):
        convert_torch_resnet(state, small)
    with pytest.raises(ValueError, match="fc.weight"):
        convert_torch_resnet(state, model, head="convert")
    dropped = convert_torch_resnet(state, ResNetRegressor(n_outputs=1000), head="drop")
    assert not dropped.head_converted and "fc.weight" in dropped.ignored_keys
    with pytest.raises(ValueError, match="head"):
        convert_torch_resnet(state, model, head="keep")


def test_unreadable_weight_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torch_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        load_torch_state_dict(bad)
    arrays = tmp_path / "weights.npz"
    np.savez(arrays, **{"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)})
    with pytest.raises(ValueError, match="weights.npz.*missing keys"):
        imagenet_variables(arrays, ResNetRegressor(stage_sizes=(1, 1, 1, 1), num_filters=8))


def test_a_run_starts_from_imagenet_weights(tiny_config, tmp_path):
    # The tiny config's network (one block per stage, 8 filters) has a torchvision-shaped counterpart.
    torch_model = _random_resnet((1, 1, 1, 1), width=8, seed=4)
    weights = tmp_path / "resnet.pth"
    torch.save(torch_model.state_dict(), weights)
    config = dataclasses.replace(tiny_config, init_imagenet=str(weights))
    result = train(config, tmp_path / "run", stop_at_step=0)
    assert result.step == 0 and result.resumed_from is None
    params = jax.device_get(result.state.params)
    stats = jax.device_get(result.state.batch_stats)
    torch_state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    assert np.array_equal(params["conv_init"]["kernel"], torch_state["conv1.weight"].transpose(2, 3, 1, 0))
    assert np.array_equal(params["BottleneckBlock_3"]["BatchNorm_2"]["scale"], torch_state["layer4.0.bn3.weight"])
    assert np.array_equal(stats["BottleneckBlock_2"]["norm_proj"]["var"],
                          torch_state["layer3.0.downsample.1.running_var"])
    # The regression head is new: zero kernel, the training targets' mean as bias.
    target_mean = ShardDataset(list(tiny_config.data.train)).column_mean("expression")
    assert np.array_equal(params["head"]["kernel"], np.zeros((256, 28), np.float32))
    assert np.allclose(params["head"]["bias"], target_mean)

    with pytest.raises(ValueError, match="exclusive"):
        train(dataclasses.replace(config, init_checkpoint=str(tmp_path / "run")), tmp_path / "other")
    with pytest.raises(ValueError, match="shape mismatches"):
        train(dataclasses.replace(config, model=dataclasses.replace(config.model, num_filters=16)),
              tmp_path / "wider", stop_at_step=0)
