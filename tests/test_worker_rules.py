"""The worker's pure rules: failure decisions, prompt ids, workflows, preset checks."""

import random

import pytest

from comfygram.comfyui import (
    ComfyUIUnavailable,
    ExecutionFailed,
    OutputImage,
    PromptRejected,
    PromptTimeout,
)
from comfygram.presets import Preset, compatibility_problems, load_presets
from comfygram.worker import workflow
from comfygram.worker.failures import (
    Action,
    FailureKind,
    backoff,
    classify,
    decide,
    describe,
    error_kind,
)

PRESETS = {p.slug: p for p in load_presets(None)}


def rules(kind, used, previous=None, max_attempts=3):
    return decide(
        kind,
        attempts_used=used,
        max_attempts=max_attempts,
        backoff_base=5.0,
        previous_error=previous,
    )


def test_failures_are_classified():
    oom = ExecutionFailed.from_message(
        {
            "prompt_id": "p",
            "node_id": "3",
            "node_type": "KSampler",
            "exception_type": "torch.OutOfMemoryError",
            "exception_message": "Allocation on device 0 would exceed allowed memory.",
        }
    )
    assert classify(ComfyUIUnavailable("down")) is FailureKind.UNAVAILABLE
    assert classify(PromptRejected("bad", {})) is FailureKind.VALIDATION
    assert classify(PromptTimeout("slow")) is FailureKind.TIMEOUT
    assert classify(oom) is FailureKind.OUT_OF_MEMORY
    assert classify(RuntimeError("boom")) is FailureKind.EXECUTION


def test_unreachable_comfyui_waits_and_validation_fails_at_once():
    assert rules(FailureKind.UNAVAILABLE, 2).action is Action.WAIT
    assert rules(FailureKind.VALIDATION, 0).action is Action.FAIL
    assert rules(FailureKind.INPUT, 0).action is Action.FAIL


def test_execution_errors_retry_with_exponential_backoff_until_max_attempts():
    assert rules(FailureKind.EXECUTION, 0) == rules(FailureKind.TIMEOUT, 0)
    delays = [rules(FailureKind.EXECUTION, used).delay for used in (0, 1)]
    assert delays == [5.0, 10.0]
    assert rules(FailureKind.EXECUTION, 2).action is Action.FAIL
    assert rules(FailureKind.EXECUTION, 0, max_attempts=1).action is Action.FAIL
    assert backoff(30, 5.0) == 600.0  # capped


def test_out_of_memory_frees_and_retries_once():
    first = rules(FailureKind.OUT_OF_MEMORY, 0)
    assert first.action is Action.RETRY and first.free_memory and first.delay == 0
    previous = describe(FailureKind.OUT_OF_MEMORY, "Allocation on device")
    assert error_kind(previous) is FailureKind.OUT_OF_MEMORY
    second = rules(FailureKind.OUT_OF_MEMORY, 1, previous=previous, max_attempts=5)
    assert second.action is Action.FAIL and second.free_memory
    assert error_kind("something else: x") is None and error_kind(None) is None


def test_prompt_ids_are_stable_per_attempt_and_differ_between_attempts():
    assert workflow.prompt_id_for("job", 0) == workflow.prompt_id_for("job", 0)
    assert workflow.prompt_id_for("job", 0) != workflow.prompt_id_for("job", 1)
    assert workflow.prompt_id_for("job", 0) != workflow.prompt_id_for("other", 0)


def test_workflow_gets_image_prompt_seed_and_a_per_attempt_output_prefix():
    preset = PRESETS["edit"]
    prompt = preset.contract.prompt
    assert prompt is not None
    built = workflow.build_workflow(
        preset,
        photos=["in.png"],
        prompt="make it snow",
        chosen={},
        job_id="j1",
        attempt=2,
        rng=random.Random(7),
    )
    assert built[preset.contract.photos[0].node]["inputs"]["image"] == "in.png"
    assert built[prompt.node]["inputs"][prompt.input] == "make it snow"
    seed = preset.seed_inputs[0]
    assert built[seed.node]["inputs"][seed.input] == random.Random(7).randint(0, 2**53 - 1)
    assert built[preset.contract.output.node]["inputs"]["filename_prefix"] == "comfygram/j1-2"
    # The preset itself is untouched.
    assert (
        preset.workflow[preset.contract.output.node]["inputs"]["filename_prefix"]
        != "comfygram/j1-2"
    )


def test_only_this_attempts_files_from_the_output_node_count_as_the_outputs():
    def saved(name: str, node: str = "9") -> OutputImage:
        return OutputImage(name, "comfygram", "output", node=node)

    ours = [saved(f"j1-2_0000{n}_.png") for n in (1, 2, 3)]
    cached = saved("j1-1_00001_.png")
    other_job = saved("j1-20_00001_.png")
    preview_node = saved("j1-2_00001_.png", node="4")  # another save node of the workflow
    found = workflow.our_outputs([cached, ours[0], preview_node, *ours[1:]], "j1", 2, "9")
    assert found == ours  # every file of the batch, in ComfyUI's order
    assert workflow.our_outputs([cached, other_job, preview_node], "j1", 2, "9") == []


def test_every_slot_and_chosen_option_is_filled_in():
    preset = Preset.model_validate(
        {
            **PRESETS["invert"].model_dump(),
            "slug": "two",
            "workflow": {
                "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                "2": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                "3": {
                    "class_type": "ImageStitch",
                    "inputs": {"image1": ["1", 0], "image2": ["2", 0], "spacing_width": 0},
                },
                "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
            },
            "contract": {
                "photos": [{"name": "a", "node": "1"}, {"name": "b", "node": "2"}],
                "options": [
                    {
                        "id": "gap",
                        "title": {"en": "Gap"},
                        "default": "none",
                        "choices": [
                            {"id": "none", "title": {"en": "No"}},
                            {
                                "id": "wide",
                                "title": {"en": "Wide"},
                                "sets": [{"node": "3", "input": "spacing_width", "value": 32}],
                            },
                        ],
                    }
                ],
                "output": {"node": "4", "kind": "image"},
            },
        }
    )
    built = workflow.build_workflow(
        preset,
        photos=["p0.png", "p1.png"],
        prompt=None,
        chosen={"gap": "wide"},
        job_id="j",
        attempt=0,
    )
    assert [built[n]["inputs"]["image"] for n in ("1", "2")] == ["p0.png", "p1.png"]
    assert built["3"]["inputs"]["spacing_width"] == 32
    default = workflow.build_workflow(
        preset, photos=["p0.png", "p1.png"], prompt=None, chosen={}, job_id="j", attempt=0
    )
    assert default["3"]["inputs"]["spacing_width"] == 0
    names = {workflow.input_name("j", 1, i, ".png") for i in range(4)}
    assert len(names) == 4 and workflow.input_name("j", 1, 0, ".png") == "comfygram-j-1.png"


def test_manifest_round_trip_gives_the_same_preset():
    for preset in PRESETS.values():
        assert Preset.from_manifest(preset.to_manifest(), preset.workflow) == preset


@pytest.mark.parametrize("slug", ["invert", "oil"])
def test_compatibility_names_missing_nodes_and_model_files(slug):
    preset = PRESETS[slug]
    everything = {
        node["class_type"]: {"input": {"required": {}}} for node in preset.workflow.values()
    }
    assert compatibility_problems(preset, everything) == []
    missing_node = dict(everything)
    missing_node.pop("SaveImage")
    assert any("SaveImage" in p for p in compatibility_problems(preset, missing_node))
    if slug == "oil":
        with_models = dict(everything)
        with_models["CheckpointLoaderSimple"] = {
            "input": {"required": {"ckpt_name": [["other.safetensors"], {}]}}
        }
        (problem,) = compatibility_problems(preset, with_models)
        assert "checkpoints/" in problem and "other.safetensors" in problem


def test_a_backend_refusal_and_a_poison_job_fail_at_once_with_no_retry():
    from comfygram.api import BackendError

    refusal = BackendError(413, "file_too_large", "The request body is too large.", {})
    assert classify(refusal) is FailureKind.REFUSED
    for kind in (FailureKind.REFUSED, FailureKind.CRASHED):
        assert rules(kind, 0).action is Action.FAIL
        assert error_kind(describe(kind, "x")) is kind


def test_an_outage_is_told_once_and_retried_with_a_growing_pause(caplog):
    from comfygram.worker.runner import Outage

    outage = Outage("Redis", "check REDIS_URL", first=1.0, cap=15.0)
    with caplog.at_level("INFO", logger="comfygram.worker.runner"):
        for _ in range(6):
            outage.failed(ConnectionError("Connection refused"))
        delays = outage.delay()
        outage.passed()
        outage.passed()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Redis unreachable (ConnectionError: Connection refused): check REDIS_URL; "
        "retrying until it answers",
        "Redis reachable again",
    ]
    assert delays == 15.0 and outage.delay() == 1.0
