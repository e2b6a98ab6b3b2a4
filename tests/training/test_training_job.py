"""The training job end to end on a tiny generated dataset: artifact, exact resume, ONNX, handler, evaluate."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from synthetic import encode, xray

from cxr import cli, jobcode, training_run
from lambdas.domain import threshold_amendment

pytestmark = pytest.mark.slow

ROOT_IMAGING = jobcode.TRAINING_JOB.parent / "lambdas" / "domain" / "imaging.py"


def test_every_artifact_is_written(trained):
    model = trained / "model"
    for name in ("model.pt", "model.onnx", "model.json", "metrics.json", "report/report.html",
                 "code/inference.py", "code/imaging.py", "code/decision.py", "code/ood.py", "ood.npz"):
        assert (model / name).is_file(), name
    code_imaging = model / "code" / "imaging.py"
    assert not code_imaging.is_symlink() and code_imaging.read_bytes() == ROOT_IMAGING.read_bytes()
    config = json.loads((model / "model.json").read_text())
    assert config["classes"] == ["bacterial", "normal", "viral"]
    assert config["resize_policy"] == "squash" and config["image_size"] == 32
    assert config["temperature"] > 0 and len(config["data_fingerprint"]) == 64
    assert config["onnx_max_abs_diff"] < 1e-3
    assert config["onnx_outputs"] == ["logits", "cams", "features"]
    guard = config["out_of_distribution"]
    assert guard["file"] == "ood.npz" and guard["threshold"] > 0 and guard["validation_rate"] <= 0.02
    assert set(config["subtype_prior"]) == {"bacterial", "viral"}
    assert sum(config["subtype_prior"].values()) == pytest.approx(1.0)
    assert config["referral_margin"] == pytest.approx(np.log(4))  # the default, recorded for the endpoint
    metrics = json.loads((model / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "roc_auc", "ece", "calibration", "validation"):
        assert key in metrics, key
    assert set(metrics["binary"]) >= {"accuracy", "roc_auc", "sensitivity", "specificity"}
    assert {"ece_before", "ece_after", "temperature"} <= set(metrics["calibration"])
    assert metrics["evaluated_on"] == "test" and metrics["n"] == sum(map(sum, metrics["confusion_matrix"]))
    assert metrics["training"]["epochs_run"] == 3
    rule = metrics["decision"]
    assert rule["threshold"] == (config["threshold"] or 0.5) and rule["margin"] == config["referral_margin"]
    assert rule["band"][0] < rule["threshold"] < rule["band"][1]
    assert rule["threshold_variable"] == threshold_amendment.THRESHOLD_VARIABLE  # the registry may amend it
    assert rule["referred"] == round(rule["referral_rate"] * metrics["n"])
    assert rule["coverage"] == pytest.approx(1 - rule["referral_rate"])
    assert json.loads((trained / "output" / "data" / "metrics.json").read_text()) == metrics


def last_weights(checkpoints: Path) -> dict:
    """The raw weights of a job's last checkpoint."""
    return torch.load(max(checkpoints.glob("ckpt-*.pt")), weights_only=False)["model"]


def test_resume_from_a_mid_epoch_checkpoint_gives_the_uninterrupted_weights(trained, staged, tmp_path):
    from synthetic import TINY_HPS

    checkpoints = sorted((trained / "checkpoints").glob("ckpt-*.pt"))
    assert [c.name for c in checkpoints][:3] == ["ckpt-00000002.pt", "ckpt-00000004.pt", "ckpt-00000006.pt"]
    interrupted = tmp_path / "checkpoints"
    interrupted.mkdir()
    shutil.copy(trained / "checkpoints" / "ckpt-00000006.pt", interrupted)  # mid epoch 1 of 3
    model_dir = training_run.run_training_job(staged.channels, TINY_HPS, tmp_path / "job", checkpoint_dir=interrupted)
    assert "resumed_from" in (tmp_path / "job" / "train.log").read_text()
    resumed = torch.load(model_dir / "model.pt")
    uninterrupted = torch.load(trained / "model" / "model.pt")
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    # the shipped weights may be an epoch's from before the interruption (the best on validation): the last
    # checkpoint's are the ones the resumed steps made
    last, last_resumed = last_weights(trained / "checkpoints"), last_weights(interrupted)
    assert last.keys() == last_resumed.keys() and all(torch.equal(last_resumed[k], v) for k, v in last.items())
    assert json.loads((model_dir / "metrics.json").read_text())["accuracy"] == json.loads(
        (trained / "model" / "metrics.json").read_text())["accuracy"]


def test_onnx_matches_torch_on_every_output(trained):
    import onnxruntime as ort

    networks = jobcode.load("networks")
    model, _ = jobcode.load("artifact").load_torch_model(trained / "model")
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        logits, cams, features = networks.Exported(model)(x)
        assert torch.allclose(logits, model(x), atol=1e-5)  # the class maps average back to the logits
        last, statistics = model.features_and_statistics(x)
        assert torch.equal(last, model.features(x)) and torch.equal(statistics, features)
        assert features.shape == (5, 2 * (8 + 16 + 32))  # mean and spread of the three stages of `compact`
    session = ort.InferenceSession(str(trained / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["logits", "cams", "features"]
    got_logits, got_cams, got_features = session.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(got_logits, logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_cams, cams.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_features, features.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def handler(trained):
    inference = jobcode.load("inference", trained / "model" / "code")
    return inference, inference.model_fn(str(trained / "model"))


def test_handler_round_trips_png_and_jpeg(handler):
    inference, model = handler
    image = xray("bacterial", np.random.default_rng(5), size=(300, 240))
    results = {}
    for fmt, content_type in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        request = inference.input_fn(encode(image, fmt), content_type)
        body, accept = inference.output_fn(inference.predict_fn(request, model), "application/json")
        assert accept == "application/json"
        results[fmt] = json.loads(body)
    for result in results.values():
        assert result["label"] in model.classes
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["confidence"] == pytest.approx(result["probabilities"][result["label"]])
        assert result["pneumonia_probability"] == pytest.approx(1 - result["probabilities"]["normal"])
    # JPEG's loss moves the probabilities a little, not the decision's ballpark
    assert results["PNG"]["pneumonia_probability"] == pytest.approx(results["JPEG"]["pneumonia_probability"], abs=0.1)


def noise_and_page() -> dict[str, bytes]:
    """Two obvious non-X-rays that pass the normaliser: grey uniform noise and a typed page."""
    noise = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    page = Image.new("L", (300, 400), 255)
    draw = ImageDraw.Draw(page)
    for row in range(20):
        draw.text((20, 15 + 19 * row), "Invoice 2024 total amount due 1,234.00 signature", fill=0)
    return {"noise": encode(noise, "PNG"), "page": encode(np.asarray(page), "PNG")}


def test_an_obvious_non_x_ray_is_referred_as_out_of_distribution(handler):
    inference, model = handler
    for name, body in noise_and_page().items():
        result = inference.predict_fn(inference.input_fn(body, "image/png"), model)
        guard = result["out_of_distribution"]
        assert guard["flagged"] and guard["score"] > guard["threshold"], name
        assert result["refer_to_radiologist"] is True and "out_of_distribution" in result["referral_reasons"]
    xray_like = encode(xray("normal", np.random.default_rng(7), size=(300, 240)), "PNG")
    result = inference.predict_fn(inference.input_fn(xray_like, "image/png"), model)
    assert result["out_of_distribution"]["score"] < result["out_of_distribution"]["threshold"] * 3


class TwoOutputs(torch.nn.Module):
    """The export before the guard: logits and class maps only."""

    def __init__(self, model):
        super().__init__()
        self.exported = jobcode.load("networks").Exported(model)

    def forward(self, x):
        return self.exported(x)[:2]


def test_an_artifact_from_before_the_guard_serves_without_a_score(trained, tmp_path):
    """Two ONNX outputs and no ``ood.npz``: the answer says there is no score, and refers nothing for it."""
    artifact = jobcode.load("artifact")
    model_dir = tmp_path / "model"
    shutil.copytree(trained / "model", model_dir)
    torch_model, config = artifact.load_torch_model(model_dir)
    torch.onnx.export(TwoOutputs(torch_model), (torch.rand(1, 1, 32, 32),), str(model_dir / "model.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logits", "cams"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "cams": {0: "batch"}})
    (model_dir / "ood.npz").unlink()
    for key in ("out_of_distribution", "onnx_outputs"):
        config.pop(key)
    (model_dir / "model.json").write_text(json.dumps(config))
    inference = jobcode.load("inference", model_dir / "code")
    model = inference.model_fn(str(model_dir))
    result = inference.predict_fn(inference.input_fn(noise_and_page()["noise"], "image/png"), model)
    assert result["out_of_distribution"]["score"] is None and not result["out_of_distribution"]["flagged"]
    assert "predates" in result["out_of_distribution"]["note"]
    assert "out_of_distribution" not in result["referral_reasons"]


def test_each_answer_names_its_artifact_and_each_call_logs_one_line(trained, monkeypatch, capsys):
    """The deploy step's CXR_ARTIFACT_SHA256 comes back in the answer; stdout (the endpoint's log group) gets one
    JSON line per call with the content hash, model, digest and decision, and nothing else about the input."""
    inference = jobcode.load("inference", trained / "model" / "code")
    monkeypatch.setenv("CXR_ARTIFACT_SHA256", "c0" * 32)
    model = inference.model_fn(str(trained / "model"))
    upload = encode(xray("normal", np.random.default_rng(9), size=(200, 180)), "PNG")
    capsys.readouterr()
    result = inference.predict_fn(inference.input_fn(upload, "image/png"), model)
    assert result["artifact_sha256"] == "c0" * 32
    [line] = capsys.readouterr().out.splitlines()
    logged = json.loads(line)
    assert logged["content_hash"] == result["content_hash"] and logged["artifact_sha256"] == "c0" * 32
    assert logged["model_id"] == result["model_id"] and logged["label"] == result["label"]
    assert "refer_to_radiologist" in logged and "probabilities" not in logged


def test_the_stored_png_predicts_exactly_like_the_upload(handler):
    inference, model = handler
    upload = encode(xray("viral", np.random.default_rng(9), size=(400, 320)), "PNG")
    stored = inference.imaging.normalise(upload).png
    first = inference.predict_fn(inference.input_fn(upload, "image/png"), model)
    again = inference.predict_fn(inference.input_fn(stored, "image/png"), model)
    assert first["probabilities"] == again["probabilities"]


def test_explanation_overlay_on_request(handler):
    inference, model = handler
    upload = encode(xray("bacterial", np.random.default_rng(2), size=(300, 240)), "JPEG")
    body = json.dumps({"image": base64.b64encode(upload).decode(), "explain": True})
    result = inference.predict_fn(inference.input_fn(body, "application/json"), model)
    overlay = Image.open(io.BytesIO(base64.b64decode(result["explanation"]["overlay_png"])))
    stored = inference.imaging.normalise(upload)
    assert overlay.size == (stored.width, stored.height) and overlay.mode == "RGB"
    plain = inference.predict_fn(inference.input_fn(upload, "image/jpeg"), model)
    assert "explanation" not in plain


def test_an_explained_answer_fits_the_serverless_limit_for_the_largest_upload(handler):
    """4 MB: "The maximum request and response payload size for serverless invocations is 4 MB" (SageMaker
    developer guide, "Invoke a serverless endpoint"). The worst case for the overlay PNG is noise at the stored
    size, so the upload is 7,700 x 7,700 px (59 MP, under the 60 MP cap) of 256 px noise, as a JPEG under 30 MiB."""
    inference, model = handler
    noise = np.random.default_rng(3).integers(0, 256, (256, 256), dtype=np.uint8)
    big = Image.fromarray(noise).resize((7700, 7700), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    upload = buffer.getvalue()
    assert len(upload) <= inference.imaging.MAX_UPLOAD_BYTES and 7700 * 7700 <= inference.imaging.MAX_PIXELS
    body = json.dumps({"image": base64.b64encode(upload).decode(), "explain": True})
    answer, _ = inference.output_fn(inference.predict_fn(inference.input_fn(body, "application/json"), model),
                                    "application/json")
    overlay = Image.open(io.BytesIO(base64.b64decode(json.loads(answer)["explanation"]["overlay_png"])))
    assert max(overlay.size) == inference.imaging.STORED_MAX_SIDE
    assert len(answer.encode()) < 4 * 1024 * 1024
    assert len(answer.encode()) < 400 * 1024  # the bound the module docstring states (0.27 MB of base64)


@pytest.mark.parametrize(("body", "content_type"), [(b"hello", "image/png"), (b"{}", "application/json"),
                                                    (b"x", "text/csv")])
def test_handler_refuses_bad_requests(handler, body, content_type):
    inference, _ = handler
    with pytest.raises(inference.BadRequest):
        inference.input_fn(body, content_type)


def test_evaluate_agrees_with_metrics_json(trained, staged, capsys):
    test_folder = staged.channels["test"] / "processed"
    assert cli.main(["evaluate", "--model", str(trained / "model"), "--data", str(test_folder), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads((trained / "model" / "metrics.json").read_text())
    assert printed["n"] == expected["n"]
    assert printed["confusion_matrix"] == expected["confusion_matrix"]
    assert printed["binary"]["confusion_matrix"] == expected["binary"]["confusion_matrix"]
    for key in ("accuracy", "macro_f1", "roc_auc"):
        assert printed[key] == pytest.approx(expected[key], abs=1e-3), key
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        assert printed["binary"][key] == pytest.approx(expected["binary"][key], abs=1e-3), key


def test_evaluate_refers_exactly_the_images_the_endpoint_and_the_lambda_refer(trained, staged, handler, capsys):
    """The same model, the same images: `cxr evaluate`'s referral figures are the served records' own."""
    from cxr.commands import evaluate
    from lambdas import predict
    from lambdas.domain import labels
    from lambdas.s3io import SourceObject

    inference, model = handler
    folder = staged.channels["test"] / "processed"
    assert cli.main(["evaluate", "--model", str(trained / "model"), "--data", str(folder), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["decision"]
    records = []
    for path, truth in evaluate.labelled_images(folder):
        answer = inference.predict_fn(inference.input_fn(path.read_bytes(), "image/png"), model)
        record = predict.prediction_record(SourceObject("b", f"incoming/{path.name}", 1, "v", ""), answer, "e")
        records.append((record, labels.training_label(truth, model.classes)))
    assert figures["referred"] == sum(r["refer_to_radiologist"] for r, _ in records)
    kept = [(r, truth) for r, truth in records if not r["refer_to_radiologist"]]
    assert figures["unreferred_accuracy"] == (pytest.approx(sum(r["label"] == t for r, t in kept) / len(kept))
                                              if kept else None)  # a few seconds of training may refer them all
    for name, count in figures["reasons"].items():
        assert count == sum(name in r["referral_reasons"] for r, _ in records), name
    assert {(r["threshold"], tuple(r["referral_band"])) for r, _ in records} == {(figures["threshold"],
                                                                                 tuple(figures["band"]))}


def test_evaluate_reads_model_tar_gz(trained, staged, tmp_path, capsys):
    archive = training_run.pack_model(trained / "model", tmp_path / "model.tar.gz")
    assert cli.main(["evaluate", "--model", str(archive), "--data", str(staged.channels["test"] / "processed")]) == 0
    assert "binary (pneumonia vs normal)" in capsys.readouterr().out


def test_sigterm_saves_a_checkpoint_and_the_restarted_job_resumes_from_it(staged, tmp_path):
    """SageMaker stops a spot job with SIGTERM: the job checkpoints at the next step and exits; a restart resumes."""
    import os
    import signal
    import subprocess
    import sys

    from synthetic import TINY_HPS

    code = tmp_path / "code"
    training_run.packaging.stage_sources(code)
    hps = {**TINY_HPS, "epochs": 12, "log-steps": 1, "checkpoint-steps": 1000}
    env = {**os.environ, "SM_MODEL_DIR": str(tmp_path / "model"), "SM_OUTPUT_DATA_DIR": str(tmp_path / "output"),
           "SM_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
           **{f"SM_CHANNEL_{k.upper()}": str(v) for k, v in staged.channels.items()}}
    cmd = [sys.executable, "train.py", *training_run.hyperparameter_flags(hps)]
    process = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if '"step": 3' in line:
            process.send_signal(signal.SIGTERM)
            break
    output = process.stdout.read()
    assert process.wait(timeout=120) == 143, output
    assert "stop requested" in output
    saved = sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))
    assert saved and not (tmp_path / "model" / "model.onnx").exists()
    step = int(saved[-1].stem.split("-")[1])
    restarted = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stdout[-2000:] + restarted.stderr[-2000:]
    assert f'"resumed_from": "{saved[-1].name}", "global_step": {step}' in restarted.stdout
    assert (tmp_path / "model" / "model.onnx").is_file()


def test_an_unweighted_loss_gets_no_subtype_prior(staged, tmp_path):
    """Its scores already carry the training mix: re-weighting by it again would count it twice."""
    from synthetic import TINY_HPS

    model_dir = training_run.run_training_job(staged.channels, TINY_HPS | {"class-weighting": "none", "epochs": 1},
                                              tmp_path / "job")
    assert json.loads((model_dir / "model.json").read_text())["subtype_prior"] is None


def test_the_weight_average_weighs_every_step_seen_and_not_the_start():
    """Bias-corrected EMA: after n steps, step i carries (1 - d) d^(n-i) / (1 - d^n); short runs ship their steps."""
    from torch.optim.swa_utils import AveragedModel

    train = jobcode.load("train")
    decay, steps = 0.99, [torch.full((3,), float(i)) for i in range(1, 6)]
    model = torch.nn.Linear(3, 1, bias=False)
    average = AveragedModel(model, multi_avg_fn=train.bias_corrected_ema(decay))
    for weights in steps:
        model.weight.data.copy_(weights)
        average.update_parameters(model)
    n = len(steps)
    expected = sum((1 - decay) * decay ** (n - i) * w for i, w in enumerate(steps, 1)) / (1 - decay ** n)
    assert torch.allclose(average.module.weight.data[0], expected)
    assert expected[0] > 2.9  # about the plain mean 3.0; an uncorrected EMA would still sit near 1.1


def test_a_model_trained_on_equalised_input_is_served_equalised_input(staged, tmp_path):
    """``intensity`` travels in model.json, and the handler feeds the network what training fed it."""
    from synthetic import TINY_HPS

    model_dir = training_run.run_training_job(staged.channels, TINY_HPS | {"intensity": "equalize", "epochs": 1},
                                              tmp_path / "job")
    inference = jobcode.load("inference", model_dir / "code")
    config = inference.model_fn(str(model_dir)).config
    assert config["intensity"] == "equalize"
    stored = inference.imaging.open_stored(inference.imaging.normalise(
        encode(xray("viral", np.random.default_rng(4), size=(300, 240)), "PNG")).png)
    size, policy = config["image_size"], config["resize_policy"]
    served = inference.model_input(stored, config)[0, 0]
    np.testing.assert_array_equal(served, inference.imaging.to_model_input(stored, size, policy, "equalize"))
    assert not np.array_equal(served, inference.imaging.to_model_input(stored, size, policy))
    older = {k: v for k, v in config.items() if k != "intensity"}  # models from before the policy existed
    np.testing.assert_array_equal(inference.model_input(stored, older)[0, 0],
                                  inference.imaging.to_model_input(stored, size, policy))


def test_the_benchmark_channel_is_answered_by_the_final_model(staged, tmp_path):
    """benchmark.json: one answer per benchmark image (the model's own decision rule), with the set's version."""
    from synthetic import TINY_HPS

    bench = tmp_path / "benchmark"
    shutil.copytree(staged.channels["test"], bench)
    jsonl = next(bench.rglob("*.jsonl"))
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    jsonl.write_text("".join(json.dumps({**r, "benchmark_version": "v-test"}) + "\n" for r in records))
    out = training_run.run_training_job({**staged.channels, "benchmark": bench}, {**TINY_HPS, "epochs": 1},
                                        tmp_path / "job")
    answers = json.loads((out / "benchmark.json").read_text())
    assert answers["version"] == "v-test" and len(answers["records"]) == len(records)
    for record, answer in zip(records, answers["records"], strict=True):
        assert answer["content_hash"] == record["content_hash"] and answer["truth"] == (record["label"] != "normal")
        assert 0 <= answer["score"] <= 1 and isinstance(answer["called"], bool)
    metrics = json.loads((out / "metrics.json").read_text())
    test_calls = metrics["binary"]["sensitivity"] is not None  # same images as the test split: same figures
    called = np.array([a["called"] for a in answers["records"]])
    truth = np.array([a["truth"] for a in answers["records"]])
    assert test_calls and (called & truth).sum() / truth.sum() == pytest.approx(metrics["binary"]["sensitivity"])


def test_without_a_benchmark_channel_the_answers_say_so(trained):
    answers = json.loads((trained / "model" / "benchmark.json").read_text())
    assert answers == {"version": None, "records": [], "note": "no benchmark set"}


def test_a_log_whose_reader_is_gone_does_not_stop_training(tmp_path):
    """The toolkit's entry pipes rank 0's output through itself; a stop can end it first. Rank 0's next log line
    must not raise (BrokenPipeError killed it before the stop's checkpoint), and later lines go nowhere."""
    import subprocess
    import sys

    script = (f"import sys; sys.path.insert(0, {str(jobcode.TRAINING_JOB)!r}); import train\n"
              "import time; time.sleep(0.5)\n"  # the reader closes its end meanwhile
              "train.say({'epoch': 0}); train.say('two')\n"
              "sys.stderr.write('still running\\n')")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    assert b"still running" in err and b"BrokenPipeError" not in err


def test_a_mixup_run_mixes_and_resumes_to_the_uninterrupted_weights(trained, staged, tmp_path):
    """The blends draw from the checkpointed augmentation stream: a resumed run blends the same pairs. Compared on
    the last checkpoint's raw weights: the shipped ones may be an epoch's from before the interruption."""
    from synthetic import TINY_HPS

    hps = TINY_HPS | {"mixup": 0.4}
    training_run.run_training_job(staged.channels, hps, tmp_path / "whole")
    interrupted = tmp_path / "checkpoints"
    interrupted.mkdir()
    shutil.copy(tmp_path / "whole" / "checkpoints" / "ckpt-00000006.pt", interrupted)  # mid epoch 1 of 3
    training_run.run_training_job(staged.channels, hps, tmp_path / "job", checkpoint_dir=interrupted)
    assert "resumed_from" in (tmp_path / "job" / "train.log").read_text()

    mixed, again = last_weights(tmp_path / "whole" / "checkpoints"), last_weights(interrupted)
    plain = last_weights(trained / "checkpoints")
    assert all(torch.equal(again[key], value) for key, value in mixed.items())
    assert not all(torch.equal(plain[key], value) for key, value in mixed.items())


def test_an_ensemble_is_its_seeds_networks_trained_alone_and_served_as_their_mean(trained, staged, tmp_path):
    """Two members: the first is the one-network job's network (same seed), the second seed + 1's; model.json
    records them, metrics.json each one's training, and the ONNX file (the one that serves) answers with the mean.
    A job stopped inside the second member resumes it and keeps the first: the uninterrupted weights."""
    import onnxruntime as ort
    from synthetic import TINY_HPS

    hps = TINY_HPS | {"ensemble": 2}
    model_dir = training_run.run_training_job(staged.channels, hps, tmp_path / "whole")
    config = json.loads((model_dir / "model.json").read_text())
    assert config["ensemble"] == 2 and config["hyperparameters"]["ensemble"] == 2
    training = json.loads((model_dir / "metrics.json").read_text())["training"]
    assert [m["epochs_run"] for m in training["members"]] == [3, 3] and training["epochs_run"] == 6
    assert [entry["member"] for entry in training["history"]] == [0, 0, 0, 1, 1, 1]

    model, _ = jobcode.load("artifact").load_torch_model(model_dir)
    alone, _ = jobcode.load("artifact").load_torch_model(trained / "model")
    assert all(torch.equal(value, model.members[0].state_dict()[key]) for key, value in alone.state_dict().items())
    assert not torch.equal(model.members[1].classifier.weight, alone.classifier.weight)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        mean = torch.stack([member(x) for member in model.members]).mean(dim=0)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"image": x.numpy()})[0], mean.numpy(), atol=1e-4)

    interrupted = tmp_path / "checkpoints"
    (interrupted / "member-1").mkdir(parents=True)
    shutil.copy(max((tmp_path / "whole" / "checkpoints").glob("ckpt-*.pt")), interrupted)  # the first: done
    shutil.copy(tmp_path / "whole" / "checkpoints" / "member-1" / "ckpt-00000006.pt", interrupted / "member-1")
    resumed_dir = training_run.run_training_job(staged.channels, hps, tmp_path / "job", checkpoint_dir=interrupted)
    log = (tmp_path / "job" / "train.log").read_text()
    assert log.count("resumed_from") == 2 and '"epoch": 0' not in log  # neither member started again
    again, _ = jobcode.load("artifact").load_torch_model(resumed_dir)
    assert all(torch.equal(value, again.state_dict()[key]) for key, value in model.state_dict().items())
