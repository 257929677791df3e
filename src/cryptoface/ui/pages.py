"""The web app's pages: plain server-rendered HTML, every value escaped, one stylesheet and one script shipped
in the package (no CDN, works offline). Accessible by construction: a skip link, labelled controls, one ``h1``
per page, native form controls (keyboard order = document order), ``role="alert"`` for errors and a polite live
region for a running task. Pages show the local user their own results (decision, score); they never show a key,
a template or a ciphertext.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from cryptoface.client.transport import Subject
from cryptoface.ui.photos import Photo
from cryptoface.ui.tasks import Task

NAV = (("/", "Photo"), ("/subjects", "Subjects"), ("/tasks", "Tasks"), ("/eval", "Evaluation"),
       ("/settings", "Settings"))


def e(value: Any) -> str:
    return escape(str(value), quote=True)


def page(title: str, body: str, *, here: str, header: str, refresh: bool = False) -> str:
    """A whole page: ``header`` is the key-set/server line, ``here`` the nav entry marked current."""
    nav = " ".join(f'<a href="{href}"{" aria-current=page" if href == here else ""}>{e(label)}</a>'
                   for href, label in NAV)
    noscript = '<noscript><meta http-equiv="refresh" content="2"></noscript>' if refresh else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · CryptoFace</title><link rel="stylesheet" href="/static/ui.css">
<script src="/static/ui.js" defer></script>{noscript}</head>
<body><a class="skip" href="#main">Skip to content</a>
<header><p class="brand">CryptoFace <span class="muted">{e(header)}</span></p>
<nav aria-label="Main">{nav}</nav></header>
<main id="main"><h1>{e(title)}</h1>
{body}
</main>
<footer><p class="muted">The secret key stays in this app on this machine. The server sees ciphertexts only.</p>
</footer></body></html>"""


def alert(message: str | None) -> str:
    return f'<p class="error" role="alert">{e(message)}</p>' if message else ""


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(token)}">'


def home(csrf: str, error: str | None = None) -> str:
    return f"""{alert(error)}
<p>Choose a photo of one face. It is detected and aligned here; you see the crop before anything is encrypted.</p>
<form method="post" action="/photos" enctype="multipart/form-data" id="photo-form">{_csrf(csrf)}
<p><label for="photo">Photo (JPEG or PNG)</label><br>
<input type="file" id="photo" name="photo" accept="image/jpeg,image/png,image/*" required></p>
<div id="camera" hidden>
<p><button type="button" id="camera-start">Use the camera</button>
<button type="button" id="camera-capture" hidden>Capture this frame</button></p>
<video id="camera-video" autoplay playsinline muted hidden aria-label="Camera preview"></video>
<p id="camera-status" class="muted" aria-live="polite"></p>
</div>
<p><button type="submit">Detect and align</button></p>
</form>"""


def photo_page(photo: Photo, subjects: Sequence[Subject], csrf: str, error: str | None = None) -> str:
    pid = e(photo.photo_id)
    options = "".join(f'<option value="{e(s.name)}">{e(s.name)}</option>' for s in subjects)
    verify = (f"""<form method="post" action="/photos/{pid}/verify">{_csrf(csrf)}
<p><label for="verify-subject">Subject</label>
<select id="verify-subject" name="subject" required>{options}</select>
<button type="submit">Verify</button></p></form>""" if subjects else
              '<p class="muted">No subject is enrolled yet: enrol one first.</p>')
    identify = (f"""<form method="post" action="/photos/{pid}/identify">{_csrf(csrf)}
<p><button type="submit">Identify against all {len(subjects)} enrolled subject(s)</button></p></form>"""
                if subjects else '<p class="muted">Nothing to identify against yet.</p>')
    x, y, w, h = (round(v) for v in photo.face.box)
    return f"""{alert(error)}
<div class="figures">
<figure><img src="/photos/{pid}/preview.png" alt="The photo with the detected face outlined">
<figcaption>{e(photo.name)}: face at ({x}, {y}), {w}×{h} px, detector score {photo.face.score:.2f}</figcaption>
</figure>
<figure><img src="/photos/{pid}/crop.png" alt="The aligned 112×112 face crop that will be encrypted" width="224"
height="224"><figcaption>Aligned crop (detect and align took {photo.align_seconds:.2f} s). Only its
encryption leaves this machine.</figcaption></figure>
</div>
<section aria-labelledby="enrol-h"><h2 id="enrol-h">Enrol</h2>
<form method="post" action="/photos/{pid}/enrol">{_csrf(csrf)}
<p><label for="enrol-subject">Subject name</label>
<input id="enrol-subject" name="subject" required maxlength="100" autocomplete="off">
<label><input type="checkbox" name="add" value="1"> add to an enrolled subject</label>
<button type="submit">Enrol</button></p></form></section>
<section aria-labelledby="verify-h"><h2 id="verify-h">Verify (1:1)</h2>{verify}</section>
<section aria-labelledby="identify-h"><h2 id="identify-h">Identify (1:N)</h2>{identify}</section>"""


def _seconds(v: float | None) -> str:
    return "…" if v is None else f"{v:.2f} s"


def _result(task: Task) -> str:
    r = task.result
    if not r:
        return ""
    if task.kind == "evaluate":
        rows = [("model", r["model"]), ("pairs scored", f'{r["pairs"]} of {r["pairs_total"]}'),
                ("accuracy at the EER threshold", f'{100 * r["accuracy"]:.2f} %'), ("EER", f'{100 * r["eer"]:.2f} %'),
                ("EER threshold", f'{r["eer_threshold"]:.4f}'),
                ("TAR at FAR 1e-2", f'{100 * r["tar_at_far_1e-2"]:.2f} %'),
                ("TAR at FAR 1e-3", f'{100 * r["tar_at_far_1e-3"]:.2f} %'),
                ("photos without a usable face", r["photos_without_face"])]
        table = "".join(f"<tr><th scope=row>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
        return (f'<section aria-labelledby="result-h"><h2 id="result-h">Result</h2><table>{table}</table>'
                f'<img src="/tasks/{e(task.task_id)}/roc.png" alt="ROC curve of the scored pairs" class="plot">'
                "</section>")
    decision = r.get("decision", "done")
    good = decision in ("ACCEPT", "IDENTIFIED") or task.kind == "enrol"
    lines = [f'<p class="decision {"ok" if good else "no"}" id="decision">{e(decision)}</p>'] if "decision" in r else []
    if task.kind == "enrol":
        lines.append(f'<p id="decision" class="decision ok">Enrolled {e(r["subject"])} '
                     f'({r["templates"]} template(s))</p>')
    if task.kind == "verify":
        lines.append(f'<p>Subject {e(r["subject"])}: cosine <strong id="score">{r["score"]:.4f}</strong> against the '
                     f'threshold {r["threshold"]:.4f}</p>')
    if task.kind == "identify":
        if r["identified"]:
            lines.append(f'<p>Identified <strong id="identified">{e(r["identified"])}</strong>, cosine '
                         f'<strong id="score">{r["score"]:.4f}</strong> (threshold {r["threshold"]:.4f})</p>')
        best = "".join(f"<li>{e(n)}: {v:.4f}</li>" for n, v in r["best"])
        lines.append(f"<p>Best cosines:</p><ol>{best}</ol>")
    return f'<section aria-labelledby="result-h"><h2 id="result-h">Result</h2>{"".join(lines)}</section>'


def task_page(task: Task, csrf: str) -> str:
    job = task.job
    done, total = (job.done, job.total) if job is not None else (0, 0)
    steps = "".join(f"<tr><td>{e(s.name)}</td><td>{_seconds(s.seconds)}</td></tr>" for s in task.steps)
    total_s = sum(s.seconds or 0.0 for s in task.steps)
    cancel = (f"""<form method="post" action="/tasks/{e(task.task_id)}/cancel">{_csrf(csrf)}
<p><button type="submit" id="cancel">Cancel</button></p></form>""" if task.ended is None else "")
    server = f"layer {done} of {total}" + (f" ({e(job.step)})" if job and job.step else "") if total else \
        ("waiting for the server" if task.state == "running" else "")
    return f"""<div id="task" data-task="{e(task.task_id)}" data-state="{e(task.state)}">
<p aria-live="polite">State: <strong id="task-state">{e(task.state)}</strong>
<span id="task-step" class="muted">{e(task.current)}</span></p>
<p><label for="server-progress">Server's encrypted inference</label>
<progress id="server-progress" max="{max(total, 1)}" value="{done}">{done}/{total}</progress>
<span id="server-text">{server}</span></p>
{alert(task.error)}
{_result(task)}
<table><caption>Steps and their times</caption><thead><tr><th scope=col>Step</th><th scope=col>Time</th></tr>
</thead><tbody id="steps">{steps}</tbody><tfoot><tr><th scope=row>Total</th><td>{total_s:.2f} s</td></tr></tfoot>
</table>
{cancel}
</div>"""


def _when(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def tasks_page(tasks: Iterable[Task]) -> str:
    rows = "".join(f'<tr><td><a href="/tasks/{e(t.task_id)}">{e(t.title)}</a></td><td>{e(t.state)}</td>'
                   f"<td>{_when(t.created)}</td></tr>" for t in tasks)
    if not rows:
        return '<p class="muted">No task yet in this session.</p>'
    return ('<p>Tasks keep running when you close their page; come back here to see them end.</p><table>'
            f"<thead><tr><th scope=col>Task</th><th scope=col>State</th><th scope=col>Started</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def subjects_page(subjects: Sequence[Subject], csrf: str, error: str | None = None) -> str:
    if not subjects:
        return alert(error) + '<p class="muted">No subject is enrolled under this key set. Enrol one from a ' \
            '<a href="/">photo</a>.</p>'
    rows = []
    for s in subjects:
        sid = int(s.subject_id)
        rows.append(f"""<tr><td>{e(s.name)}</td><td>{len(s.template_ids)}</td>
<td><form method="post" action="/subjects/{sid}/templates" enctype="multipart/form-data" class="inline">{_csrf(csrf)}
<label for="add-{sid}">Add a photo of {e(s.name)}</label> <input type="file" id="add-{sid}" name="photo"
accept="image/*" required> <button type="submit">Add template</button></form></td>
<td><form method="post" action="/subjects/{sid}/delete" class="inline" data-confirm="Delete {e(s.name)} and every
template?">{_csrf(csrf)}<button type="submit" aria-label="Delete {e(s.name)}">Delete</button></form></td></tr>""")
    return f"""{alert(error)}<table><thead><tr><th scope=col>Subject</th><th scope=col>Templates</th>
<th scope=col>Add</th><th scope=col>Delete</th></tr></thead><tbody>{"".join(rows)}</tbody></table>"""


def settings_page(rows: Sequence[tuple[str, Any]], health: dict[str, Any] | None, error: str | None = None) -> str:
    table = "".join(f"<tr><th scope=row>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    server = "unreachable" if health is None else ", ".join(
        f"{k} {health[k]}" for k in ("status", "api", "model_id", "model_resolution") if k in health)
    return f"""{alert(error)}<table><caption>Key set and client</caption>{table}
<tr><th scope=row>server</th><td>{e(server)}</td></tr></table>"""


def eval_page(csrf: str, error: str | None = None) -> str:
    return f"""{alert(error)}
<p>Measure verification accuracy on your own pairs, in the clear on this machine (nothing is sent to the server).
The CSV has the header <code>image1,image2,same</code> and one pair per row (paths relative to the CSV;
same = 1 for the same person, 0 otherwise).</p>
<form method="post" action="/eval">{_csrf(csrf)}
<p><label for="csv">Pairs CSV (a path on this machine)</label><br>
<input id="csv" name="csv" required size="60" autocomplete="off"></p>
<p><label for="model">Model</label> <select id="model" name="model">
<option value="">the bundled CryptoFaceNet4</option><option value="sface">SFace (reference, clear only)</option>
</select></p>
<p><button type="submit">Evaluate</button></p></form>"""


def message_page(text: str) -> str:
    return f"<p>{e(text)}</p>"


__all__ = ["eval_page", "home", "message_page", "page", "photo_page", "settings_page", "subjects_page",
           "task_page", "tasks_page"]
