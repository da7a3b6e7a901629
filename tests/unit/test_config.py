"""`motioncrafter.config`: defaults, TOML / YAML round trips, overrides, and errors that name the field."""

from __future__ import annotations

import dataclasses

import pytest

from motioncrafter.config import (
    AdapterConfig,
    Config,
    ConfigError,
    RenderConfig,
    TuneConfig,
    from_dict,
    load_config,
    save_config,
)


def test_defaults_load():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.render.num_steps == 25 and cfg.render.scheduler == "base"
    assert cfg.tune.mode == "motioncrafter" and cfg.adapter.kind == "lora"
    assert cfg.enhance.subjects == [] and cfg.enhance.scenes == []  # the base's own, else everyday words (prompts.vocabulary_for)
    assert set(cfg.to_dict()) == {f.name for f in dataclasses.fields(Config)}


def _changed() -> Config:
    cfg = Config()
    cfg.render = RenderConfig(num_steps=7, guidance_scale=2.5, scheduler="dpm", seeds=[3, 4, 5], negative_prompt="blurry")
    cfg.tune = TuneConfig(mode="motiondirector", steps=11, lr=5e-4, beta=0.5, zero_stage=2, progress=False)
    cfg.adapter = AdapterConfig(kind="full", rank=4, alpha=2.0)
    cfg.model.base_model = "s3://bucket/models/zeroscope"
    cfg.enhance.subjects = ["a bear", "a robot", "a cat"]
    cfg.enhance.swap_scene_prob = 0.25
    return cfg


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml"])
def test_file_round_trip(tmp_path, suffix):
    cfg = _changed()
    path = tmp_path / f"run{suffix}"
    save_config(cfg, path)
    loaded = load_config(path)
    assert loaded == cfg
    assert loaded != Config()  # the changes survived, not just the defaults
    # the file is the format its suffix says
    text = path.read_text()
    assert ("[render]" in text) == (suffix == ".toml")
    assert ("render:" in text) == (suffix != ".toml")


def test_partial_file_keeps_other_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[render]\nnum_steps = 3\n\n[tune]\nlr = 1\n")
    cfg = load_config(path)
    assert cfg.render.num_steps == 3
    assert cfg.tune.lr == 1.0 and isinstance(cfg.tune.lr, float)  # ints are accepted for floats
    assert cfg.render.guidance_scale == RenderConfig().guidance_scale
    assert cfg.video == Config().video


def test_overrides_apply_after_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("render:\n  num_steps: 3\n  scheduler: dpm\n")
    cfg = load_config(path, ["render.num_steps=9", "tune.mode=temporal_only", "render.seeds=[1, 2]", "tune.progress=false"])
    assert cfg.render.num_steps == 9  # override wins over the file
    assert cfg.render.scheduler == "dpm"  # the file wins over the default
    assert cfg.tune.mode == "temporal_only"
    assert cfg.render.seeds == [1, 2]
    assert cfg.tune.progress is False


def test_override_value_with_equals_sign():
    cfg = load_config(overrides=["render.negative_prompt=a=b"])
    assert cfg.render.negative_prompt == "a=b"


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["render.num_step=3"])
    msg = str(err.value)
    assert msg.startswith("render.num_step:")
    assert "'num_steps'" in msg


def test_unknown_section_suggests(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[rendr]\nnum_steps = 3\n")
    with pytest.raises(ConfigError, match=r"rendr: unknown key; did you mean 'render'\?"):
        load_config(path)


def test_unknown_key_without_close_match_lists_keys():
    with pytest.raises(ConfigError, match=r"tune\.zzzzzz: unknown key; known keys: mode, steps"):
        load_config(overrides=["tune.zzzzzz=1"])


@pytest.mark.parametrize(
    "override, field, expected",
    [
        ('render.num_steps="x"', "render.num_steps", "expected int, got str"),
        ("render.num_steps=true", "render.num_steps", "expected int, got bool"),
        ("render.num_steps=2.5", "render.num_steps", "expected int, got float"),
        ("tune.lr=fast", "tune.lr", "expected float, got str"),
        ("render.seeds=[1, x]", "render.seeds[1]", "expected int, got str"),
        ("render.seeds=3", "render.seeds", "expected a list"),
        ("tune.progress=3", "tune.progress", "expected bool, got int"),
    ],
)
def test_wrong_type_names_field(override, field, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(f"{field}:")
    assert expected in str(err.value)


def test_section_that_is_not_a_table(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("render: 5\n")
    with pytest.raises(ConfigError, match=r"^render: expected a table"):
        load_config(path)


@pytest.mark.parametrize(
    "override, field",
    [
        ("tune.lambda_app=-0.1", "tune.lambda_app"),
        ("tune.steps=0", "tune.steps"),
        ("tune.mode=dreambooth", "tune.mode"),
        ("tune.num_frames=1", "tune.num_frames"),
        ("tune.zero_stage=4", "tune.zero_stage"),
        ("tune.engine=jax", "tune.engine"),
        ("adapter.kind=dora", "adapter.kind"),
        ("adapter.rank=-1", "adapter.rank"),
        ("adapter.alpha=-1", "adapter.alpha"),
        ("adapter.dropout=1", "adapter.dropout"),
        ("adapter.dropout=-0.1", "adapter.dropout"),
        ("render.scheduler=euler", "render.scheduler"),
        ("render.num_steps=0", "render.num_steps"),
        ("model.dtype=int8", "model.dtype"),
        ("enhance.swap_scene_prob=1.5", "enhance.swap_scene_prob"),
        ("enhance.subjects=[a cat]", "enhance.subjects"),
        ("video.sampling=random", "video.sampling"),
        ("tune.spatial_warmup=-1", "tune.spatial_warmup"),
        ("tune.spatial_freeze=true", "tune.spatial_freeze"),  # with nothing warmed up: no spatial path at all
    ],
)
def test_validation_errors_name_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(f"{field}:"), str(err.value)


def test_validation_in_code_too():
    """The dataclasses validate themselves, not just the loader."""
    with pytest.raises(ConfigError, match=r"^tune\.mode: 'nope' is not one of"):
        TuneConfig(mode="nope")
    with pytest.raises(ConfigError, match=r"^adapter\.kind:"):
        AdapterConfig(kind="nope")
    with pytest.raises(ConfigError, match=r"^tune\.lambda_app: must be >= 0, got -1"):
        from_dict(TuneConfig, {"lambda_app": -1}, "tune")


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["num_steps=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["render.num_steps"])


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[render\nnum_steps = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: cannot parse"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a table"):
        load_config(top)


def test_exponent_floats_from_the_command_line() -> None:
    """YAML 1.1 reads "1e-4" as a string; a float field takes it as the number it is."""
    assert load_config(None, ["tune.lr=1e-4"]).tune.lr == 1e-4
    assert load_config(None, ["tune.spatial_lr=2E+0"]).tune.spatial_lr == 2.0
    with pytest.raises(ConfigError, match="tune.lr"):
        load_config(None, ["tune.lr=fast"])


def test_zero3_with_gradient_checkpointing_is_refused() -> None:
    from motioncrafter.config import TuneConfig

    TuneConfig(engine="deepspeed", zero_stage=2, gradient_checkpointing=True)
    TuneConfig(engine="deepspeed", zero_stage=3)
    with pytest.raises(ConfigError, match="tune.gradient_checkpointing: does not work with DeepSpeed ZeRO-3"):
        TuneConfig(engine="deepspeed", zero_stage=3, gradient_checkpointing=True)


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"mode": "temporal_only", "spatial_warmup": 10}, "tune.spatial_warmup: mode 'temporal_only' has no spatial path"),
        ({"spatial_warmup": 10, "spatial_freeze": True, "lambda_app": 1.0}, "tune.spatial_freeze: needs tune.lambda_app = 0"),
        ({"spatial_warmup": 10, "spatial_freeze": True, "spatial_pass": "joint"}, "tune.spatial_freeze: needs tune.lambda_app = 0"),
    ],
)
def test_spatial_warmup_and_freeze_are_refused_where_they_cannot_work(settings, match) -> None:
    from motioncrafter.config import TuneConfig

    with pytest.raises(ConfigError, match=match):
        TuneConfig(**settings)


def test_spatial_warmup_and_freeze_are_accepted_where_they_work() -> None:
    from motioncrafter.config import TuneConfig

    TuneConfig(mode="motiondirector", spatial_warmup=10, spatial_freeze=True)
    TuneConfig(spatial_warmup=10, lambda_app=1.0, engine="deepspeed", zero_stage=3)  # warmed up, not frozen
    TuneConfig(spatial_warmup=10, spatial_freeze=True, engine="deepspeed", zero_stage=2)
    TuneConfig(spatial_warmup=10, spatial_freeze=True, engine="deepspeed", zero_stage=3)
