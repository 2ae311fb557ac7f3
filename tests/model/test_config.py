"""neuron_config.json: default buckets, bucket choice, validation that names the field, save/load."""

import json

import pytest

from granite_bench.model.config import (NEURON_CONFIG_NAME, BucketError, NeuronConfig, NeuronConfigError,
                                        autobucket, pick_bucket)


@pytest.mark.parametrize("max_length, expected", [
    (4096, [128, 256, 512, 1024, 2048, 4096]),
    (1000, [128, 256, 512, 1000]),
    (150, [128, 150]),          # NxDI's rounding would give [150] here
    (180, [128, 180]),
    (128, [128]),
    (100, [100]),
])
def test_autobucket_gives_powers_of_two_from_128_then_the_maximum(max_length, expected):
    assert autobucket(max_length) == expected


@pytest.mark.parametrize("length, expected", [(1, 16), (16, 16), (17, 32), (33, 64), (64, 64)])
def test_pick_bucket_picks_the_smallest_bucket_that_fits(length, expected):
    assert pick_bucket([16, 32, 64], length, "prompt") == expected


def test_pick_bucket_past_the_largest_bucket_raises_bucket_error_naming_it():
    with pytest.raises(BucketError, match=r"65 tokens.*largest bucket \(64\)"):
        pick_bucket([16, 32, 64], 65, "prompt")


def test_default_buckets_follow_autobucket_of_context_and_sequence_length():
    config = NeuronConfig(sequence_length=1000, max_context_length=300)
    assert config.context_encoding_buckets == autobucket(300)
    assert config.token_generation_buckets == autobucket(1000)


def test_explicit_buckets_are_kept_and_sorted():
    config = NeuronConfig(sequence_length=96, max_context_length=64, context_encoding_buckets=[64, 16, 32],
                          token_generation_buckets=[96, 32])
    assert config.context_encoding_buckets == [16, 32, 64]
    assert config.token_generation_buckets == [32, 96]


@pytest.mark.parametrize("kwargs, field", [
    ({"batch_size": -1}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"tp_degree": 0}, "tp_degree"),
    ({"sequence_length": 64, "max_context_length": 128}, "max_context_length"),
    ({"torch_dtype": "float8"}, "torch_dtype"),
    ({"sequence_length": 96, "max_context_length": 64, "context_encoding_buckets": [16, 128]},
     "context_encoding_buckets"),
    ({"sequence_length": 96, "token_generation_buckets": [32, 32]}, "token_generation_buckets"),
    ({"output_logits": "yes"}, "output_logits"),
])
def test_invalid_value_raises_an_error_naming_the_field(kwargs, field):
    with pytest.raises(NeuronConfigError, match=f"'{field}'") as err:
        NeuronConfig(**kwargs)
    assert "\n" not in str(err.value)


def write_json(directory, text: str):
    path = directory / NEURON_CONFIG_NAME
    path.write_text(text)
    return path


def test_unknown_field_in_json_is_named(tmp_path):
    write_json(tmp_path, json.dumps({"batch_size": 2, "bucket_sizes": [16]}))
    with pytest.raises(NeuronConfigError, match="unknown field 'bucket_sizes'"):
        NeuronConfig.load(tmp_path)


@pytest.mark.parametrize("data, field", [
    ({"sequence_length": "96"}, "sequence_length"),
    ({"sequence_length": 96, "max_context_length": "64"}, "max_context_length"),
    ({"sequence_length": 96, "context_encoding_buckets": ["sixteen"]}, "context_encoding_buckets"),
])
def test_value_of_the_wrong_type_in_json_is_named(tmp_path, data, field):
    write_json(tmp_path, json.dumps(data))
    with pytest.raises(NeuronConfigError, match=f"'{field}'"):
        NeuronConfig.load(tmp_path)


def test_malformed_json_raises_a_one_line_error_naming_the_file(tmp_path):
    path = write_json(tmp_path, '{"batch_size": 2,')
    with pytest.raises(NeuronConfigError, match="not valid JSON") as err:
        NeuronConfig.load(tmp_path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_json_that_is_not_an_object_is_refused(tmp_path):
    write_json(tmp_path, "[1, 2]")
    with pytest.raises(NeuronConfigError, match="JSON object"):
        NeuronConfig.load(tmp_path)


def test_missing_file_raises_neuron_config_error(tmp_path):
    with pytest.raises(NeuronConfigError, match=NEURON_CONFIG_NAME):
        NeuronConfig.load(tmp_path)


def test_save_then_load_gives_the_same_config(tmp_path):
    config = NeuronConfig(batch_size=3, sequence_length=96, max_context_length=64, tp_degree=2,
                          torch_dtype="bfloat16", context_encoding_buckets=[16, 32, 64],
                          token_generation_buckets=[32, 96], fused_qkv=False, output_logits=False)
    path = config.save(tmp_path)
    assert path == tmp_path / NEURON_CONFIG_NAME
    assert NeuronConfig.load(path) == config
    assert NeuronConfig.load(tmp_path) == config
