import pytest

from granite_bench.parity.tolerances import (
    DEFAULT_PATH,
    canonical_dtype,
    load_profiles,
    profile_for,
)


def test_yaml_loads_all_three_profiles():
    profiles = load_profiles()
    assert set(profiles) >= {"float32", "bfloat16", "float16"}
    for name, p in profiles.items():
        assert p.name == name
        assert p.tol_map and p.divergence_tolerance > 0 and p.localisation_rtol > 0
        assert all(k is None or k > 0 for k in p.tol_map)
    # the dtype decides the tolerance: fp32's loosest relative tolerance is tighter than bf16's tightest
    fp32, bf16 = profiles["float32"].tol_map, profiles["bfloat16"].tol_map
    assert max(rtol for _, rtol in fp32.values()) < min(rtol for _, rtol in bf16.values())


def test_default_path_is_the_suite_file():
    assert DEFAULT_PATH.name == "tolerances.yaml" and DEFAULT_PATH.parent.name == "parity"
    assert DEFAULT_PATH.is_file()


def test_low_precision_profiles_follow_nxdi_practice():
    bf16, fp16 = profile_for("bfloat16"), profile_for("float16")
    nxdi = profile_for("bfloat16", "bfloat16-nxdi")
    assert bf16.tol_map == nxdi.tol_map == {50: (1e-5, 0.04)} and nxdi.divergence_tolerance == 0.13
    # the default bf16 divergence tolerance is calibrated on the random-weight presets (see the YAML)
    assert 0.13 < bf16.divergence_tolerance <= 0.5
    assert fp16.tol_map == {None: (1e-5, 0.05), 1000: (1e-5, 0.03), 50: (1e-5, 0.02), 5: (1e-5, 0.01)}
    assert fp16.divergence_tolerance == 0.02


def test_float32_is_tighter_than_the_low_precision_profiles():
    fp32 = profile_for("float32")
    for other in (profile_for("bfloat16"), profile_for("float16")):
        assert max(r for _, r in fp32.tol_map.values()) < min(r for _, r in other.tol_map.values())
        assert fp32.divergence_tolerance < other.divergence_tolerance
        assert fp32.localisation_rtol < other.localisation_rtol


@pytest.mark.parametrize("alias,name", [("bf16", "bfloat16"), ("torch.bfloat16", "bfloat16"), ("fp32", "float32"),
                                        ("half", "float16"), ("Float16", "float16")])
def test_dtype_aliases(alias, name):
    assert canonical_dtype(alias) == name
    assert profile_for(alias).name == name


def test_unknown_dtype_raises():
    with pytest.raises(ValueError, match="unknown dtype"):
        profile_for("int8")


def test_override_string_replaces_map_and_divergence():
    p = profile_for("bfloat16", "50:1e-5:0.04,5:1e-5:0.01;div=0.2")
    assert p.tol_map == {50: (1e-5, 0.04), 5: (1e-5, 0.01)}
    assert p.divergence_tolerance == 0.2
    assert p.localisation_rtol == profile_for("bfloat16").localisation_rtol


def test_override_parts_not_given_keep_the_dtype_values():
    base = profile_for("float16")
    only_div = profile_for("float16", "div=0.5")
    assert only_div.tol_map == base.tol_map and only_div.divergence_tolerance == 0.5
    only_map = profile_for("float16", "all:0:0.1;loc=0.3")
    assert only_map.tol_map == {None: (0.0, 0.1)} and only_map.localisation_rtol == 0.3
    assert only_map.divergence_tolerance == base.divergence_tolerance


def test_override_by_profile_name():
    assert profile_for("float32", "bfloat16") == profile_for("bfloat16")


@pytest.mark.parametrize("bad", ["50:1e-5", "x:1e-5:0.1", "50:1e-5:0.04;foo=1", "50:1e-5:0.04;div=",
                                 "", "div=nan", "0:1e-5:0.1", "5:0:0.1,5:0:0.2", "5:-1:0.1",
                                 "5:0:0.1;5:0:0.1", "div=0.1;div=0.2", "5:0:0.1,"])
def test_bad_override_raises_one_line_with_the_format(bad):
    with pytest.raises(ValueError) as info:
        profile_for("bfloat16", bad)
    message = str(info.value)
    assert "\n" not in message and "K:ATOL:RTOL" in message


def test_load_profiles_from_another_file(tmp_path):
    path = tmp_path / "tol.yaml"
    path.write_text(
        "profiles:\n"
        "  float32:\n"
        "    tol_map: {all: [0, 1e-3], 10: [1e-6, 1e-4]}\n"
        "    divergence_tolerance: 1e-2\n"
        "    localisation_rtol: 1e-3\n"
    )
    profiles = load_profiles(path)
    assert profiles["float32"].tol_map == {None: (0.0, 1e-3), 10: (1e-6, 1e-4)}
    assert profiles["float32"].divergence_tolerance == 1e-2  # '1e-2' is a string to YAML 1.1
    assert profile_for("float32", path=path).localisation_rtol == 1e-3
    with pytest.raises(ValueError, match="no tolerance profile"):
        profile_for("bfloat16", path=path)


def test_calibrated_raises_each_rtol_to_the_framework_factor_times_hf_own_error_and_never_lowers_it():
    from granite_bench.parity.tolerances import calibrated
    base = profile_for("bfloat16")
    assert base.framework_factor == 1.25
    loose = calibrated(base, {"err_top50": 0.08, "gap_err": 2.0})
    assert loose.tol_map[50] == (base.tol_map[50][0], pytest.approx(0.1))
    assert loose.divergence_tolerance == pytest.approx(2.5)
    assert loose.name == "bfloat16+hf-1.25x"
    # HF's own error well inside the profile: the profile stands, unchanged and under its own name
    assert calibrated(base, {"err_top50": 0.01, "gap_err": 0.1}) == base


def test_calibration_needs_every_k_of_the_profile_and_leaves_float32_alone():
    from granite_bench.parity.tolerances import calibrated
    with pytest.raises(KeyError):
        calibrated(profile_for("float16"), {"err_top50": 0.5, "gap_err": 1.0})  # float16 also checks all/1000/5
    fp32 = profile_for("float32")
    assert fp32.framework_factor is None and calibrated(fp32, {"err_all": 1.0, "err_top5": 1.0, "gap_err": 9}) == fp32
