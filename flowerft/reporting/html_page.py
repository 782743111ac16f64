"""The HTML of `flowerft report`: a string.Template page, plain tables and embedded images.

No JavaScript and no external resource: the page reads the same from a mail attachment, an
archive or a browser without network. Every value from the run is escaped.
"""

from __future__ import annotations

import time
from functools import partial
from html import escape
from string import Template
from typing import Any, Iterable

from flowerft.reporting.page_data import Example, Page
from flowerft.runs import source_record

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flowerft report: $name</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a; margin: 0; background: #f5f6f8; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 2px; } h2 { font-size: 19px; margin: 0 0 12px; } h3 { font-size: 15px; margin: 18px 0 8px; }
.sub { color: #5b6570; margin: 0 0 18px; word-break: break-all; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 18px 22px; margin: 0 0 18px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 0 0 18px; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 10px 16px; min-width: 130px; }
.card b { display: block; font-size: 24px; } .card span { color: #5b6570; font-size: 13px; }
table { border-collapse: collapse; margin: 0 0 8px; }
th, td { padding: 4px 12px 4px 0; text-align: left; border-bottom: 1px solid #eceff2; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.options { columns: 3 260px; font-size: 13px; } .options div { break-inside: avoid; padding: 1px 0; overflow-wrap: anywhere; }
.options code { color: #5b6570; }
img.plot { max-width: 100%; height: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
figure { margin: 0; font-size: 13px; } figure img { width: 160px; height: 160px; object-fit: contain; background: #eceff2; border-radius: 4px; }
figure.pair img { width: 150px; height: 150px; } .grid.pairs { grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); }
figcaption { word-break: break-all; } .bad { color: #b3261e; } .ok { color: #1e7b34; }
.missing { color: #8a5a00; background: #fff6e0; border-radius: 6px; padding: 8px 12px; }
.warnings li { color: #8a5a00; margin-bottom: 4px; } .note { color: #5b6570; font-size: 13px; }
</style>
</head>
<body><main>
<h1>$name</h1>
<p class="sub">$run_dir &middot; $status &middot; report written $written</p>
$cards
$body
<p class="note">$notes</p>
</main></body>
</html>
""")


def render(page: Page) -> str:
    evaluation = _data(page.parts.get("evaluation"))
    sections = [
        _section("The run", _run_part(page)),
        _section("Training curves", _curves_part(page.parts.get("curves"))),
        _section("Test evaluation", _evaluation_part(page.parts.get("evaluation"))),
        _section("Mistakes", _mistakes_part(page.parts.get("mistakes"), page.config.get("data_dir"))),
        _section("Warnings", _warnings_part(page.warnings)),
    ]
    return PAGE.substitute(
        name=escape(page.run_dir.name), run_dir=escape(str(page.run_dir.resolve())), status=escape(page.row.status),
        written=time.strftime("%Y-%m-%d %H:%M"), cards=_cards(page, evaluation), body="\n".join(sections),
        notes=escape("; ".join(page.notes)),
    )


def _data(part) -> Any:
    return None if part is None or isinstance(part, Exception) else part


def _section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>\n{body}\n</section>"


def _missing(part) -> str:
    return f'<p class="missing">Missing: {escape(str(part))}</p>'


def pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], numeric_from: int = 1) -> str:
    def cells(tag: str, values) -> str:
        return "".join(f'<{tag}{" class=n" if i >= numeric_from else ""}>{escape(str(v))}</{tag}>' for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><tr>{cells('th', header)}</tr>{body}</table>"


def _cards(page: Page, evaluation: dict | None) -> str:
    row, best_phase = page.row, (page.metrics or {}).get("best_phase")
    figures = [
        (pct(evaluation["accuracy"]) if evaluation else "-", "test accuracy"),
        (pct((evaluation or {}).get("balanced_accuracy")), "test balanced accuracy"),
        (_f1((evaluation or {}).get("macro_f1")), "test macro F1"),
        (pct(evaluation["top2_accuracy"]) if evaluation else "-", "test top-2 accuracy"),
        (pct(row.best_val_accuracy), "best validation accuracy" + (f" ({best_phase})" if best_phase else "")),
        ("-" if row.epochs_planned is None else f"{row.epochs_run or 0}/{row.epochs_planned}", "epochs"),
        ("-" if row.wall_time_s is None else f"{row.wall_time_s / 60:.1f} min", "training time"),
    ]
    return '<div class="cards">' + "".join(f"<div class=card><b>{escape(v)}</b><span>{escape(k)}</span></div>" for v, k in figures) + "</div>"


def _run_part(page: Page) -> str:
    c, metrics = page.config, page.metrics or {}
    sizes = page.sizes
    classes = page.class_names
    source = source_record.describe(c, source_record.read(page.run_dir))
    rows = [
        ("data", source),
        ("images", ", ".join(f"{n} {s}" for s, n in sizes.items()) if sizes else "missing (no splits.json nor metrics.json)"),
        ("classes", f"{len(classes)}: {', '.join(classes)}" if classes else "missing (no class_names.json)"),
        ("model", f"{c.get('backbone')} at {c.get('image_size')} px, weights {c.get('weights')}"),
        ("recipe", f"{c.get('recipe', '-')}: head {c.get('epochs_head')} epochs at lr {c.get('lr_head')}, "
                   f"fine-tune {c.get('epochs_finetune')} epochs at lr {c.get('lr_finetune')}, batch {c.get('batch_size')}"),
    ]
    env = metrics.get("environment")
    rows.append(("trained on", ", ".join(f"{k} {v}" for k, v in env.items()) if env else
                 "not recorded (the run is unfinished, or older than flowerft's record of it)"))
    if metrics.get("precision_policy"):
        rows.append(("precision, cache", f"{metrics['precision_policy']}, {metrics.get('cache')}"))
    html = _table(("", ""), rows, numeric_from=2)
    phases = metrics.get("phases")
    if phases:
        html += "<h3>Phases</h3>" + _table(
            ("phase", "epochs", "best epoch", "best val acc", "its val loss", "last val acc", "wall time", "stopped early"),
            [(name + (" (best)" if name == metrics.get("best_phase") else ""), f"{p['epochs_run']}/{p['epochs_planned']}",
              p.get("best_epoch") or "-", pct(p.get("best_val_accuracy")), _num(p.get("best_epoch_val_loss")),
              pct(p.get("last_val_accuracy")), f"{p.get('wall_time_s', 0):.0f} s", p.get("stopped_because") or "no")
             for name, p in phases.items()])
    else:
        html += _missing(f"per-phase results: no metrics.json (the run is {page.row.status})")
    options = "".join(f"<div><code>{escape(k)}</code> {escape(_yaml_value(v))}</div>" for k, v in c.items())
    return html + f'<h3>Every option (config.yaml)</h3><div class="options">{options}</div>'


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _f1(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _curves_part(part) -> str:
    if isinstance(part, Exception) or part is None:
        return _missing(part or "not drawn")
    return (f'<img class="plot" src="{part}" alt="training curves: loss and accuracy per epoch">'
            '<p class="note">Grey: fine-tuning (after the line, the phase boundary); dotted green: the epoch of the best '
            'checkpoint, which evaluate, predict and this report use. Also saved as curves.png in the run dir.</p>')


def _evaluation_part(part) -> str:
    if isinstance(part, Exception) or part is None:
        return _missing(part or "not evaluated")
    e = part
    html = _table(("checkpoint", "images", "accuracy", "balanced accuracy", "macro F1", "top-2 accuracy", "loss"),
                  [(e["checkpoint"], e["examples"], pct(e["accuracy"]), pct(e.get("balanced_accuracy")),
                    _num(e.get("macro_f1")), pct(e["top2_accuracy"]), _num(e["loss"]))])
    rows = [*e["per_class"].items(), ("macro avg", e["macro_avg"]), ("weighted avg", e["weighted_avg"])]
    html += "<h3>Per class</h3>" + _table(
        ("class", "precision", "recall", "F1", "support"),
        [(name, _num(r["precision"]), _num(r["recall"]), _num(r["f1-score"]), int(r["support"])) for name, r in rows])
    if e.get("matrix_uri"):
        html += f'<h3>Confusion matrix</h3><img class="plot" src="{e["matrix_uri"]}" alt="confusion matrix" style="max-width:480px">'
    else:
        names = e["class_names"]
        html += "<h3>Confusion matrix (rows: true, columns: predicted)</h3>" + _table(
            ("true \\ predicted", *names), [(n, *row) for n, row in zip(names, e["confusion_matrix"])])
    return html


def _figure(x: Example, data_dir: str | None) -> str:
    image = (f'<img src="{x.thumbnail}" alt="{escape(x.path or f"test image {x.index}")}">' if x.thumbnail
             else '<p class="missing">image file missing</p>')
    if x.heatmap:  # beside the photo: where the model found the evidence for its (wrong) answer
        image = (f'<div>{image}<img src="{x.heatmap}" alt="Grad-CAM heatmap for {escape(x.predicted)}"></div>')
    verdict = "bad" if x.predicted != x.true else "ok"
    where = escape(_within(x.path, data_dir)) if x.path else f"test image #{x.index}"
    return (f"<figure{' class=pair' if x.heatmap else ''}>{image}<figcaption>true <b>{escape(x.true)}</b><br>"
            f'<span class="{verdict}">predicted <b>{escape(x.predicted)}</b> <nobr>{x.probability:.1%}</nobr></span><br>'
            f"p(true) {x.true_probability:.1%}<br><small>{where}</small></figcaption></figure>")


def _within(path: str, folder: str | None) -> str:
    """A test image's path inside the data folder (shown above), which is all that tells them apart."""
    return path[len(folder):].lstrip("/") if folder and path.startswith(folder.rstrip("/") + "/") else path


def _yaml_value(value) -> str:
    """An option as config.yaml spells it (null, false, 0.001), not as Python prints it (None, False)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").removesuffix("...").strip()


def _mistakes_part(part, data_dir: str | None) -> str:
    if isinstance(part, Exception) or part is None:
        return _missing(part or "not computed")
    figure = partial(_figure, data_dir=data_dir)
    wrong, total = part["wrong"], part["wrong_total"]
    if wrong:
        html = (f"<h3>Most confident wrong predictions ({len(wrong)} of the {total} wrong, "
                f"out of {part['examples']} test images)</h3>"
                + ("<p class=note>Beside each photo, its Grad-CAM heatmap for the predicted class: where the model found "
                   "the evidence for its answer (red: most).</p>" if any(x.heatmap for x in wrong) else "")
                + f"<div class='grid{' pairs' if any(x.heatmap for x in wrong) else ''}'>{''.join(map(figure, wrong))}</div>")
    else:
        html = f"<h3>No wrong predictions on the {part['examples']} test images</h3>"
    html += ("<h3>Worst example of each class</h3><p class=note>The test image of each class to which the model gave "
             "that class the lowest probability (it may still be right).</p>"
             f"<div class=grid>{''.join(map(figure, part['worst']))}</div>")
    return html


def _warnings_part(warnings: list[str]) -> str:
    if not warnings:
        return "<p>None: no divergence, no skipped files.</p>"
    return '<ul class="warnings">' + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>"
