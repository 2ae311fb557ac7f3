"""One schema per kind of input file, and the numeric options: every shipped file fits its schema, and each wrong
type or range is refused in one line naming the file, the field and what to give."""

import pytest
import yaml

from granite_bench import schemas
from granite_bench.resources import suites_dir
from granite_bench.schemas import SchemaError, check

SUITES = suites_dir()
SHIPPED = ([(schemas.ParitySuite, p) for p in sorted((SUITES / "parity").glob("*.yaml")) if p.stem != "tolerances"]
           + [(schemas.PerfSuite, p) for p in sorted((SUITES / "perf").glob("*.yaml"))]
           + [(schemas.ModelPreset, p) for p in sorted((SUITES / "models").glob("*.yaml"))]
           + [(schemas.TolerancesFile, SUITES / "parity" / "tolerances.yaml"),
              (schemas.EvalThresholdsFile, SUITES / "eval" / "thresholds.yaml")])


@pytest.mark.parametrize("schema, path", SHIPPED, ids=[p.relative_to(SUITES).as_posix() for _, p in SHIPPED])
def test_every_shipped_suite_file_fits_its_schema(schema, path):
    check(schema, yaml.safe_load(path.read_text()), str(path))


def refused(schema, data) -> str:
    with pytest.raises(SchemaError) as caught:
        check(schema, data, "f.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("f.yaml: ")
    return message


def tiny_preset(**config) -> dict:
    preset = yaml.safe_load((SUITES / "models" / "tiny-gqa.yaml").read_text())
    preset["config"].update(config)
    return preset


def test_token_ids_must_be_whole_non_negative_numbers_never_truncated():
    assert check(schemas.PromptsFile, [[5, 6], "text", {"random_tokens": 8}], "f") == [
        [5, 6], "text", schemas.RandomPrompt(random_tokens=8, seed=0)]
    assert "prompt 0, token 1 must be an integer, got 6.5" in refused(schemas.PromptsFile, [[5, 6.5]])
    assert "prompt 1, token 0 must be an integer, got False" in refused(schemas.PromptsFile, [[5], [False]])
    assert "prompt 0, token 0 must be 0 or more, got -4" in refused(schemas.PromptsFile, [[-4]])
    assert "prompt 0: a prompt is a text, a list of token ids" in refused(schemas.PromptsFile, [7])
    assert "random_tokens must be at most 1048576" in refused(schemas.PromptsFile, [{"random_tokens": 10**12}])
    assert "prompt 0, seeds: unknown field" in refused(schemas.PromptsFile, [{"random_tokens": 8, "seeds": 1}])


def test_a_suite_field_of_the_wrong_type_or_an_unknown_field_is_refused():
    assert "num_tokens must be an integer, got 'sixteen'" in refused(schemas.ParitySuite, {"num_tokens": "sixteen"})
    assert "bucket: unknown field" in refused(schemas.ParitySuite, {"bucket": [32]})
    assert "buckets, item 1 must be a positive integer, got 0" in refused(schemas.ParitySuite, {"buckets": [32, 0]})
    assert "device must be one of 'cpu', 'cuda' or 'neuron'" in refused(schemas.PerfSuite, {"device": "tpu"})


def test_a_preset_shape_must_hold_whole_positive_counts():
    check(schemas.ModelPreset, tiny_preset(), "tiny-gqa")
    assert "config.vocab_size must be an integer, got '4096'" in refused(schemas.ModelPreset,
                                                                          tiny_preset(vocab_size="4096"))
    assert "config.hidden_size must be an integer, got 128.0" in refused(schemas.ModelPreset,
                                                                          tiny_preset(hidden_size=128.0))
    assert "config.num_hidden_layers must be a positive integer, got 0" in refused(
        schemas.ModelPreset, tiny_preset(num_hidden_layers=0))
    assert "give 'config'" in refused(schemas.ModelPreset, {"name": "nothing"})


def test_a_preset_file_is_checked_when_it_is_loaded(tmp_path, monkeypatch):
    from granite_bench.reference import presets
    (tmp_path / "words.yaml").write_text(yaml.safe_dump(tiny_preset(num_attention_heads="eight")))
    monkeypatch.setattr(presets, "MODELS_DIR", tmp_path)
    with pytest.raises(presets.PresetError, match="config.num_attention_heads must be an integer, got 'eight'"):
        presets.load_preset("words")


def test_tolerance_profiles_and_eval_thresholds_are_typed():
    profile = {"tol_map": {50: [1e-5, 0.04]}, "divergence_tolerance": 0.13, "hidden_noise_rtol": 0.04}
    check(schemas.TolerancesFile, {"profiles": {"bf16": profile}}, "f")
    assert "must be 0 or more, got -0.1" in refused(schemas.TolerancesFile,
                                                     {"profiles": {"bf16": {**profile, "divergence_tolerance": -0.1}}})
    no_threshold = {k: v for k, v in profile.items() if k != "hidden_noise_rtol"}
    assert "give hidden_noise_rtol" in refused(schemas.TolerancesFile, {"profiles": {"bf16": no_threshold}})
    thresholds = yaml.safe_load((SUITES / "eval" / "thresholds.yaml").read_text())
    thresholds["float32"]["min_argmax_agreement"] = 1.5
    assert "float32.min_argmax_agreement must be at most 1" in refused(schemas.EvalThresholdsFile, thresholds)


@pytest.mark.parametrize("values, message", [
    ({"prefill_level": -1.0}, "--prefill-level must be 0 or more, got -1.0"),
    ({"prefill_level": float("nan")}, "--prefill-level must be a finite number, got nan"),
    ({"alpha": 1.0}, "--alpha must be below 1"),
    ({"trials": 3}, "--trials must be at least 6, got 3"),
    ({"layers": 0}, "--layers must be a positive integer, got 0"),
    ({"levels": [0.1, float("inf")]}, "--levels, item 1 must be a finite number, got inf"),
])
def test_numeric_options_are_range_checked(values, message):
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        schemas.options("cmd", **values)
    schemas.options("cmd", **{name: None for name in values})  # an option not given is not checked


def test_memory_sizes_parse_and_words_are_refused():
    assert schemas.memory_bytes("8GiB") == 8 << 30 and schemas.memory_bytes("512MB") == 512 * 10**6
    assert schemas.memory_bytes(None) is None
    for word in ("lots", "-1GiB", "0"):
        with pytest.raises(SchemaError, match="is not a size: give e.g. 8GiB"):
            schemas.memory_bytes(word)
