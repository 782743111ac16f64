"""--precision: what each choice trains in, and what auto picks on which machine."""

import pytest

from flowerft import precision
from flowerft.config_files import make_config
from flowerft.errors import ConfigError


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert precision.cpu_has_native_bfloat16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not precision.cpu_has_native_bfloat16(cpuinfo)
    assert not precision.cpu_has_native_bfloat16(tmp_path / "missing")


@pytest.mark.parametrize("native, expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_auto_takes_bfloat16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "gpu_has_tensor_cores", lambda: None)  # no GPU
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native)
    assert precision.policy(make_config(precision="auto")) == expected


def test_auto_takes_float16_on_tensor_core_gpus(monkeypatch):
    monkeypatch.setattr(precision, "gpu_has_tensor_cores", lambda: True)
    assert precision.policy(make_config(precision="auto")) == "mixed_float16"
    monkeypatch.setattr(precision, "gpu_has_tensor_cores", lambda: False)
    assert precision.policy(make_config(precision="auto")) == "float32"


def test_named_precisions_and_the_older_switch():
    assert precision.policy(make_config(precision="float32")) == "float32"
    assert precision.policy(make_config(precision="bfloat16")) == "mixed_bfloat16"
    assert precision.policy(make_config(precision="float16")) == "mixed_float16"
    assert precision.policy(make_config(precision="float32", mixed_precision=True)) == "mixed_bfloat16"  # no GPU here
    assert precision.policy(make_config(precision="float16", mixed_precision=True)) == "mixed_float16"
    with pytest.raises(ConfigError, match="precision: must be one of auto, float32, bfloat16, float16"):
        make_config(precision="int8")
