"""Model registry: shapes, sizes, stem/head placement, init-weight loading."""
import pytest
import torch
from torch import nn

from mbq.core.errors import MbqError
from mbq.core.models import (create_model, list_models, load_init_weights, model_kwargs,
                             read_state_dict_file, register_model)

FAST = {"vit_tiny": {"depth": 1}, "preact_resnet20": {"expand": 1}}
HEAVY = {"resnet50", "mobilenet_v3_large"}  # one config is enough for these
ALL = ["cnn", "resnet20", "preact_resnet20", "resnet18", "resnet50", "mobilenet_v2",
       "mobilenet_v3_small", "mobilenet_v3_large", "vit_tiny"]
CASES = [(n, c, s) for n in ALL for c, s in [(1, 28), (3, 32)]
         if not (n in HEAVY and c == 3)]


def _build(name, num_classes=10, in_channels=1, image_size=28):
    torch.manual_seed(0)
    return create_model(name, num_classes, in_channels, image_size, **FAST.get(name, {}))


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_every_model():
    assert set(ALL) <= set(list_models())


@pytest.mark.parametrize("name,in_channels,size", CASES)
def test_forward_shape_and_first_conv_last_linear(name, in_channels, size):
    model = _build(name, 7, in_channels, size).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    called = []
    for m in convs + linears:
        m.register_forward_hook(lambda mod, i, o: called.append(mod))
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    # the quantizer pins "first Conv2d / last Linear by registration": they
    # must be the stem (runs first, sees the image) and the head (runs last)
    assert convs[0].in_channels == in_channels and called[0] is convs[0]
    assert linears[-1].out_features == 7 and called[-1] is linears[-1]


def test_resnet20_cifar_size():
    n = _params(create_model("resnet20", num_classes=10, in_channels=3, image_size=32))
    assert abs(n - 0.27e6) / 0.27e6 < 0.05, n


def test_resnet20_width_multiplier():
    base = _params(create_model("resnet20"))
    assert _params(create_model("resnet20", width=2)) > 3 * base
    assert _params(create_model("resnet20", width=0.5)) < base


def test_preact_expand_is_wider():
    thin = create_model("preact_resnet20", expand=1)
    wide = create_model("preact_resnet20", expand=5)
    assert wide.fc.in_features == 320 and thin.fc.in_features == 64
    assert _params(wide) > 20 * _params(thin)


def test_small_input_stems():
    r = create_model("resnet18", in_channels=1, image_size=32)
    assert r.conv1.kernel_size == (3, 3) and r.conv1.stride == (1, 1)
    assert isinstance(r.maxpool, nn.Identity)
    big = create_model("resnet18", in_channels=1, image_size=128)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.in_channels == 1
    assert create_model("mobilenet_v2", image_size=32).features[0][0].stride == (1, 1)
    assert create_model("mobilenet_v2", in_channels=3, image_size=128).features[0][0].stride == (2, 2)


def test_vit_patch_size_rules():
    assert create_model("vit_tiny", image_size=28, depth=1).patch_size == 4
    assert create_model("vit_tiny", image_size=21, depth=1).patch_size == 7
    with pytest.raises(MbqError, match="divisible by 4 or 7"):
        create_model("vit_tiny", image_size=30, depth=1)


def test_cnn_epoch_is_fast():
    import time

    model = create_model("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(1000, 1, 28, 28), torch.randint(0, 10, (1000,))
    t = time.perf_counter()
    for i in range(0, 1000, 128):
        loss = nn.functional.cross_entropy(model(x[i:i + 128]), y[i:i + 128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert time.perf_counter() - t < 3.0  # ~0.25 s on 2 cores; generous for busy CI


def test_unknown_model_lists_known_names():
    with pytest.raises(MbqError) as e:
        create_model("resnet21")
    msg = str(e.value)
    assert "resnet21" in msg and "resnet20" in msg and "vit_tiny" in msg and "\n" not in msg


def test_bad_kwargs():
    with pytest.raises(MbqError, match="no option 'depth'.*width=1"):
        create_model("resnet20", depth=3)
    with pytest.raises(MbqError, match="width"):
        create_model("resnet20", width=0)
    with pytest.raises(MbqError, match="expand"):
        create_model("preact_resnet20", expand="wide")
    with pytest.raises(MbqError, match="num_classes"):
        create_model("cnn", num_classes=0)
    with pytest.raises(MbqError, match="has no option"):
        create_model("resnet18", width=2)


def test_model_kwargs():
    assert model_kwargs("resnet20") == {"width": 1}
    assert model_kwargs("preact_resnet20") == {"expand": 5}
    assert model_kwargs("vit_tiny")["depth"] == 6
    assert model_kwargs("resnet18") == {}
    with pytest.raises(MbqError):
        model_kwargs("nope")


def test_register_model_decorator():
    @register_model("_test_tiny")
    def _tiny(num_classes, in_channels, image_size, hidden=4):
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 3), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(hidden, num_classes))

    assert "_test_tiny" in list_models()
    assert model_kwargs("_test_tiny") == {"hidden": 4}
    assert create_model("_test_tiny", 3, hidden=2)[0].out_channels == 2
    with pytest.raises(ValueError):
        register_model("_test_tiny")(_tiny)


def test_init_round_trip():
    src, dst = _build("resnet20"), create_model("resnet20")
    report = load_init_weights(dst, src.state_dict())
    assert not report["skipped"] and not report["missing"]
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(src.eval()(x), dst.eval()(x))


def test_init_skips_head_of_other_size_and_extra_quant_keys():
    src = create_model("resnet20", num_classes=1000)
    sd = dict(src.state_dict())
    sd["layer1.0.conv1.w_bits"] = torch.tensor(4)  # mbq quantizer buffers
    sd["layer1.0.conv1.weight_quant.scale"] = torch.ones(1)
    sd = {"module." + k: v for k, v in sd.items()}  # DDP-saved
    dst = create_model("resnet20", num_classes=10)
    report = load_init_weights(dst, sd)
    skipped = dict(report["skipped"])
    assert set(skipped) == {"fc.weight", "fc.bias"} and "does not fit" in skipped["fc.weight"]
    assert set(report["missing"]) == {"fc.weight", "fc.bias"}
    assert "layer1.0.conv1.w_bits" in report["unexpected"]
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)


def test_init_adapts_rgb_stem_to_grey():
    rgb = create_model("resnet20", in_channels=3)
    grey = create_model("resnet20", in_channels=1)
    report = load_init_weights(grey, rgb.state_dict())
    assert [k for k, _ in report["adapted"]] == ["conv1.weight"]
    assert not report["skipped"] and not report["missing"]
    # a grey image gives the same output as that grey in all three RGB channels
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(grey.eval()(x), rgb.eval()(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_init_torchvision_stem_kernel_mismatch_is_skipped():
    imagenet = create_model("resnet18", num_classes=1000, in_channels=3, image_size=224)
    small = create_model("resnet18", num_classes=10, in_channels=1, image_size=28)
    report = load_init_weights(small, imagenet.state_dict())
    assert {k for k, _ in report["skipped"]} == {"conv1.weight", "fc.weight", "fc.bias"}
    assert "layer4.1.conv2.weight" in report["loaded"]


def test_init_rejects_unrelated_weights():
    with pytest.raises(MbqError, match="same architecture"):
        load_init_weights(create_model("cnn"), _build("vit_tiny").state_dict())


def test_read_state_dict_file_formats(tmp_path):
    from safetensors.torch import save_file

    sd = create_model("cnn").state_dict()
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "a.pth")
    torch.save({"model": sd}, tmp_path / "b.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "c.safetensors"))
    for name in ("a.pth", "b.pt", "c.safetensors"):
        got = read_state_dict_file(tmp_path / name)
        assert set(got) == set(sd), name
        assert all(torch.equal(got[k], sd[k]) for k in sd)
        assert load_init_weights(create_model("cnn"), got)["missing"] == []


def test_read_state_dict_file_errors(tmp_path):
    with pytest.raises(MbqError, match="not found"):
        read_state_dict_file(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a pickle at all")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    for name in ("bad.pt", "bad.safetensors"):
        with pytest.raises(MbqError) as e:
            read_state_dict_file(tmp_path / name)
        assert "\n" not in str(e.value)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(MbqError, match="not a state_dict"):
        read_state_dict_file(tmp_path / "list.pt")


def test_train_width_flag_reaches_preact_expand_as_a_float():
    from mbq.cli.train import build_config

    cfg = build_config({"arch": "preact_resnet20", "width": 0.5}, {"arch", "width"}, {}, [])
    assert cfg.model.kwargs == {"expand": 0.5}
    create_model("preact_resnet20", **cfg.model.kwargs)  # builds (16/32/64 channels halved)
    cfg = build_config({"arch": "preact_resnet20", "width": 2.0}, {"arch", "width"}, {}, [])
    assert cfg.model.kwargs == {"expand": 2}
