"""Settings: each built-in model's variables land in its own settings class.

The variables below are the ones that worked when settings were flat fields; they are listed
literally, so that renaming a field in a model's class breaks this test instead of an
operator's deployment.
"""

from __future__ import annotations

import pydantic
import pytest

from sluiceway.config import Settings
from sluiceway.kinds import BIRDS, CAPTION, IMAGENET, KNN, builtin_records
from sluiceway.model_settings import CaptionSettings, KnnSettings

# variable -> (value set, value expected on the settings object)
OLD_VARIABLES: dict[str, tuple[str, object]] = {
    "SLUICEWAY_KNN_NEIGHBORS": ("5", 5),
    "SLUICEWAY_KNN_FIT_COST_S": ("0.5", 0.5),
    "SLUICEWAY_KNN_INFER_BASE_COST_S": ("0.25", 0.25),
    "SLUICEWAY_KNN_INFER_PER_QUERY_COST_S": ("0.125", 0.125),
    "SLUICEWAY_KNN_SLOTS": ("7", 7),
    "SLUICEWAY_KNN_MAX_BATCH": ("9", 9),
    "SLUICEWAY_KNN_MAX_DELAY_MS": ("1.5", 1.5),
    "SLUICEWAY_KNN_MAX_QUEUE": ("11", 11),
    "SLUICEWAY_KNN_TENANT_QUOTA": ("13", 13),
    "SLUICEWAY_KNN_MAX_TRAINING_ROWS": ("15", 15),
    "SLUICEWAY_KNN_MAX_QUERIES": ("17", 17),
    "SLUICEWAY_KNN_INLINE_PARSE_BYTES": ("19", 19),
    "SLUICEWAY_BIRDS_MODEL_URL": ("http://127.0.0.1:9/b.tflite", "http://127.0.0.1:9/b.tflite"),
    "SLUICEWAY_BIRDS_MODEL_SHA256": ("ab" * 32, "ab" * 32),
    "SLUICEWAY_BIRDS_DOWNLOAD_TIMEOUT_S": ("21.5", 21.5),
    "SLUICEWAY_BIRDS_THREADS": ("3", 3),
    "SLUICEWAY_BIRDS_SLOTS": ("4", 4),
    "SLUICEWAY_BIRDS_MAX_BATCH": ("6", 6),
    "SLUICEWAY_BIRDS_MAX_DELAY_MS": ("2.5", 2.5),
    "SLUICEWAY_BIRDS_MAX_QUEUE": ("23", 23),
    "SLUICEWAY_BIRDS_MAX_IMAGES": ("25", 25),
    "SLUICEWAY_BIRDS_MAX_K": ("27", 27),
    "SLUICEWAY_IMAGENET_THREADS": ("2", 2),
    "SLUICEWAY_IMAGENET_SLOTS": ("3", 3),
    "SLUICEWAY_IMAGENET_MAX_BATCH": ("29", 29),
    "SLUICEWAY_IMAGENET_MAX_DELAY_MS": ("3.5", 3.5),
    "SLUICEWAY_IMAGENET_MAX_QUEUE": ("31", 31),
    "SLUICEWAY_CAPTION_MODEL": ("/srv/git-base", "/srv/git-base"),
    "SLUICEWAY_CAPTION_MAX_NEW_TOKENS": ("33", 33),
    "SLUICEWAY_CAPTION_THREADS": ("2", 2),
    "SLUICEWAY_CAPTION_SLOTS": ("2", 2),
    "SLUICEWAY_CAPTION_MAX_BATCH": ("35", 35),
    "SLUICEWAY_CAPTION_MAX_DELAY_MS": ("4.5", 4.5),
    "SLUICEWAY_CAPTION_MAX_QUEUE": ("37", 37),
    "SLUICEWAY_CAPTION_MAX_IMAGE_BYTES": ("39", 39),
    "SLUICEWAY_CAPTION_MAX_SIDE": ("41", 41),
    "SLUICEWAY_CAPTION_HUB_TIMEOUT_S": ("5.5", 5.5),
    "SLUICEWAY_CAPTION_RATE_PER_S": ("6.5", 6.5),
    "SLUICEWAY_CAPTION_RATE_BURST": ("43", 43),
}


def where(variable: str) -> tuple[str, str]:
    """``SLUICEWAY_KNN_MAX_BATCH`` -> (``knn``, ``max_batch``)."""
    model, field = variable.removeprefix("SLUICEWAY_").lower().split("_", 1)
    return model, field


@pytest.mark.parametrize("variable", sorted(OLD_VARIABLES))
def test_every_old_model_variable_lands_in_its_models_settings(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    given, expected = OLD_VARIABLES[variable]
    model, field = where(variable)
    assert getattr(getattr(Settings(), model), field) != expected, "pick a non-default value"
    monkeypatch.setenv(variable, given)
    assert getattr(getattr(Settings(), model), field) == expected


def test_all_old_variables_at_once_reach_the_models_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable, (given, _) in OLD_VARIABLES.items():
        monkeypatch.setenv(variable, given)
    records = {record.name: record for record in builtin_records(Settings())}
    knn, birds = records[KNN].policy, records[BIRDS]
    assert (knn.slots, knn.max_batch, knn.max_delay_s, knn.max_queue, knn.tenant_quota) == (
        7,
        9,
        0.0015,
        11,
        13,
    )
    assert (birds.policy.slots, birds.policy.max_batch, birds.threads) == (4, 6, 3)
    assert (birds.source.location, birds.source.sha256) == (
        "http://127.0.0.1:9/b.tflite",
        "ab" * 32,
    )
    assert (records[IMAGENET].policy.slots, records[IMAGENET].policy.max_queue) == (3, 31)
    assert records[CAPTION].source.location == "/srv/git-base"
    assert records[CAPTION].policy.max_delay_s == 0.0045


def test_the_settings_table_names_every_old_variable() -> None:
    assert set(OLD_VARIABLES) <= {variable for variable, _ in Settings.variables()}


@pytest.mark.parametrize(
    ("variable", "value", "location"),
    [
        ("SLUICEWAY_KNN_SLOTS", "0", "knn.slots"),
        ("SLUICEWAY_CAPTION_MAX_NEW_TOKENS", "257", "caption.max_new_tokens"),
        ("SLUICEWAY_BIRDS_DOWNLOAD_TIMEOUT_S", "0", "birds.download_timeout_s"),
        ("SLUICEWAY_IMAGENET_MAX_BATCH", "many", "imagenet.max_batch"),
    ],
)
def test_a_bad_model_variable_is_refused_naming_the_setting(
    variable: str, value: str, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(pydantic.ValidationError, match=location):
        Settings()


def test_flat_keywords_set_the_models_settings_and_win_over_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICEWAY_KNN_SLOTS", "5")
    monkeypatch.setenv("SLUICEWAY_KNN_MAX_QUEUE", "6")
    settings = Settings(knn_slots=2, caption=CaptionSettings(max_side=64), caption_slots=3)
    assert (settings.knn.slots, settings.knn.max_queue) == (2, 6)
    assert (settings.caption.max_side, settings.caption.slots) == (64, 3)
    assert Settings(knn=KnnSettings(neighbors=4)).knn.neighbors == 4
