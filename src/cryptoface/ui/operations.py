"""What the web app's tasks do, step by step, through the one :class:`~cryptoface.client.Client`.

Each function runs on the task worker (:mod:`cryptoface.ui.tasks`) and returns what the task's page shows. The
photo was decoded and aligned when it was uploaded (its time is the task's first step); from there: encrypt the
crop, the server's encrypted inference (a job: progress per layer, cancellable), the client's refresh (decrypt the
raw template, normalise, encrypt afresh), then the enrol or matching request and the decryption of its answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptoface.client import Client
from cryptoface.client.transport import TemplateProbe
from cryptoface.ui.photos import Photo
from cryptoface.ui.tasks import Run


def _template(client: Client, photo: Photo, run: Run, standin: Any = None) -> TemplateProbe:
    """The photo's template as matching takes it under the client's protocol, each stage a timed step.

    ``standin`` (a FusedModel; TESTING ONLY, for key sets too small for the network): the raw template is the
    model's clear embedding, encrypted here, labelled as such, instead of the server's encrypted inference."""
    run.record("detect and align", photo.align_seconds)  # done when the photo was uploaded
    with run.step("key set registered on the server"):
        client.register()  # a no-op once registered: one request
    if standin is not None:
        from cryptoface.client.photos import STANDIN_LABEL, standin_template

        with run.step(STANDIN_LABEL):
            raw = client.template_probe(standin_template(client.keys, standin, photo.crop))
    else:
        with run.step("encrypt"):
            probe = client.encrypt_photo(photo.crop)
        client.progress = run.job
        with run.step("server: encrypted inference"):
            raw = client.infer(probe)
    if client.protocol != "refresh":
        return raw
    with run.step("decrypt, normalise, encrypt afresh"):
        return client.refresh(raw)


def enrol(client: Client, photo: Photo, subject: str, add: bool, run: Run, standin: Any = None) -> dict[str, Any]:
    """Enrol ``subject`` from the photo (``add``: one more template for an enrolled subject)."""
    fresh = _template(client, photo, run, standin)
    with run.step("enrol (server stores the encrypted template)"):
        s = client.enroll(subject, [fresh], add=add)
    return {"subject": s.name, "templates": len(s.template_ids)}


def verify(client: Client, photo: Photo, subject: str, run: Run, standin: Any = None) -> dict[str, Any]:
    """1:1 against ``subject``: the decision and the best template's cosine (score mode)."""
    fresh = _template(client, photo, run, standin)
    with run.step("match (server) and decrypt"):
        r = client.verify(subject, fresh)
    return {"subject": r.subject, "decision": "ACCEPT" if r.accepted else "REJECT", "score": round(r.score, 4),
            "threshold": r.threshold}


def identify(client: Client, photo: Photo, run: Run, standin: Any = None) -> dict[str, Any]:
    """1:N against every enrolled subject: the best one above the threshold, if any, and the best scores."""
    fresh = _template(client, photo, run, standin)
    with run.step("match against all (server) and decrypt"):
        r = client.identify(fresh)
    top = sorted(r.scores.items(), key=lambda kv: kv[1], reverse=True)[:5]
    return {"identified": r.subject, "decision": "IDENTIFIED" if r.subject else "NOT IDENTIFIED",
            "score": None if r.score is None else round(r.score, 4), "threshold": r.threshold,
            "best": [[name, round(v, 4)] for name, v in top]}


def evaluate(csv_path: Path, model: str | None, run: Run, plot_path: Path) -> dict[str, Any]:
    """``cryptoface eval pairs`` on a local CSV, in the clear on this machine (no server): metrics and a ROC plot."""
    from cryptoface.eval.embedders import embedder_for
    from cryptoface.eval.pairs import evaluate_pairs
    from cryptoface.eval.plot import plot_roc

    with run.step("load the model"):
        emb, name = embedder_for(model)
    with run.step("detect, align and embed every photo; score the pairs"):
        result = evaluate_pairs(csv_path, emb)
    with run.step("plot the ROC"):
        plot_roc(result["scores"], result["labels"], plot_path, f"{csv_path.name}, {emb.name}", result["eer"],
                 result["accuracy"])
    fta = result["failure_to_acquire"]
    return {"model": Path(name).name, "pairs": result["n_pairs"], "pairs_total": result["n_pairs_total"],
            "accuracy": result["accuracy"], "eer": result["eer"], "eer_threshold": result["eer_threshold"],
            "tar_at_far_1e-2": result["tar_at_far_1e-2"], "tar_at_far_1e-3": result["tar_at_far_1e-3"],
            "photos_without_face": fta.photos, "plot": True}


__all__ = ["enrol", "evaluate", "identify", "verify"]
