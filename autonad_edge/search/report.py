"""`report.json` and `report.md`: what was searched, what was chosen, how accurate and how fast.

Both are written from one dict, so the Markdown can never disagree with the JSON.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autonad_edge.io import atomic_write_json, atomic_write_text


UNSTABLE_RATIO = 1.25  # two end-to-end measurements of one network further apart than this


def latency_disagreement(lat: dict[str, Any]) -> str | None:
    """A sentence when the two end-to-end measurements of the chosen network disagree by more
    than UNSTABLE_RATIO: the device's timings moved (another load on it, thermal or power
    state), so every latency of the run is less certain than its table suggests."""
    stat = lat.get("statistic", "median")
    first = lat.get("finalist_measured_ms")
    final = lat.get("measured_min_ms") if stat == "min" else lat.get("measured_ms")
    if not first or not final:
        return None
    ratio = max(first, final) / min(first, final)
    if ratio <= UNSTABLE_RATIO:
        return None
    return (f"the chosen network measured {first:.3f} ms during the search and {final:.3f} ms at export "
            f"({ratio:.2f}x apart): the target's timings were unstable (other load on the device, clocks "
            "or power mode changing); re-measure with `autonad-edge latency measure` on a quiet device.")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artefact_entries(out_dir: Path, paths: list[Path]) -> list[dict[str, Any]]:
    entries = []
    for p in paths:
        if p.exists() and p.is_file():
            entries.append({
                "path": str(p.relative_to(out_dir)) if p.is_relative_to(out_dir) else str(p),
                "bytes": p.stat().st_size,
                "sha256": file_sha256(p),
            })
    return entries


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _scale_line(data: dict[str, Any]) -> str:
    if data.get("squash"):
        return (f"Training scale: every image squashed to {data.get('image_size', '?')} (aspect not kept); "
                "predict and the bundle's infer.py squash images the same way.")
    if data.get("training_scale"):
        return (f"Training scale, chosen from the masks: {data['training_scale']['summary']}; inference "
                "scales images the same way.")
    return f"Training scale: long side at most {data['max_side']} px; inference scales images the same way."


def render_markdown(report: dict[str, Any]) -> str:
    chosen = report.get("chosen", {})
    target = report.get("target", {})
    data = report.get("dataset", {})
    lines = [
        "# autonad-edge search report",
        "",
        f"Target **{target.get('name', '?')}** ({target.get('backend', '?')}, {target.get('precision', '?')}) "
        f"on {target.get('device', '?')}; dataset **{data.get('format', '?')}** "
        f"({data.get('root') or 'embedded synthetic'}), {data.get('num_classes', '?')} classes at "
        f"{data.get('image_size', '?')} (network input: training crops and inference tiles).",
        *([_scale_line(data)] if data.get("max_side") or data.get("training_scale") or data.get("squash") else []),
        "",
        "## Chosen architecture",
        "",
        f"- hash `{chosen.get('hash', '?')}`: `{chosen.get('summary', '?')}`",
        *([f"- search space `{report['config']['space']}`"] if report.get("config") else []),
        f"- parameters {chosen.get('params', 0):,}; FLOPs {chosen.get('flops', 0) / 1e9:.3f} G",
        *([f"- search signal: {report['search_signal']['summary']}"] if report.get("search_signal") else []),
        *_race_lines(report.get("race")),
        "",
        "## Accuracy",
        "",
        "Background is easy (90-99 % IoU), so a model that finds no defect still scores 15-50 % mIoU: "
        "read the defect-class column.",
        "",
        "| split | mIoU (%) | mIoU, defect classes (%) | mF1 (%) |",
        "| --- | --- | --- | --- |",
    ]
    lines += _accuracy_lines(report)
    lines += _latency_lines(report.get("latency", {}))
    lines += _settings_lines(report)
    return "\n".join(lines) + "\n"


def _race_lines(race: dict[str, Any] | None) -> list[str]:
    """The race's decision and its entrants (nothing when no race ran)."""
    if not race:
        return []
    lines = [f"- race: {race['note']}"]
    if not race.get("entries"):
        return lines
    if race.get("evidence"):
        lines.append(f"- race evidence: {race['evidence']}")
    lines += ["", f"Trained from scratch for {race['steps']} steps each on the same batches (the retraining's "
              "recipe); scored by the training loss over the second half (relative to the median entrant's) "
              "and latency. Val mIoU (calibrated) for reference:", "",
              "| candidate | latency (ms) | inherited val mIoU (%) | training loss | raced val mIoU (%) | score |",
              "| --- | --- | --- | --- | --- | --- |"]
    winner = race["winner"]["hash"] if race.get("winner") else None
    for e in race["entries"]:
        mark = " (chosen)" if e["hash"] == winner else ""
        lines.append(f"| `{e['summary']}`{mark} | {e['latency_ms']:.2f} | {_pct(e['inherited_miou'])} "
                     f"| {e['train_loss']:.4f} | {_pct(e['raced_miou'])} | {e['score']:.4f} |")
    return lines


def _accuracy_lines(report: dict[str, Any]) -> list[str]:
    """The accuracy table's rows, the calibration, per-class figures and the predictions picture."""
    acc = report.get("accuracy", {})
    lines: list[str] = []
    for split in ("search_val", "race_val", "val", "test"):
        if split in acc:
            lines.append(f"| {split} | {_pct(acc[split].get('miou'))} | {_pct(acc[split].get('miou_defects'))} "
                         f"| {_pct(acc[split].get('mf1'))} |")
    calibration = acc.get("calibration")
    if calibration:
        class_offsets = calibration.get("class_offsets") or ()
        names = list(acc.get("val", {}).get("per_class") or acc.get("test", {}).get("per_class") or {})
        if class_offsets:
            labels = names if len(names) == len(class_offsets) else [str(i) for i in range(len(class_offsets))]
            chosen = ("logit offsets per class (" + ", ".join(f"{n} {v:+g}" for n, v in zip(labels, class_offsets))
                      + f"; the background offset alone gave {_pct(calibration.get('miou_background_only'))} %)")
        else:
            chosen = f"background logit {calibration['background_offset']:+g}"
            gain = calibration.get("holdout_gain")
            if gain is not None:
                chosen += (f" (one offset per class was declined: chosen on half of val's images, they scored "
                           f"{100 * gain:+.2f} points against it on the other half)")
        lines += ["", f"Decision calibrated on {calibration['split']}: {chosen}, folded into the classifier (val mIoU "
                  f"{_pct(calibration['miou_before'])} -> {_pct(calibration['miou_after'])} %); the val and test "
                  "rows above are of the calibrated network."]
    per_class_split = "test" if acc.get("test", {}).get("per_class") else "val"
    per_class = acc.get(per_class_split, {}).get("per_class")
    if per_class:
        regions = acc.get(per_class_split, {}).get("defect_level") or {}
        by_class = regions.get("per_class", {})
        overlap = regions.get("min_overlap")
        lines += ["", f"Per class, {per_class_split} split. Defects found: ground-truth regions with at least "
                  f"{_pct(overlap) if overlap is not None else '-'} % of their pixels predicted as their class; "
                  f"region precision: predicted regions with at least "
                  f"{_pct(overlap) if overlap is not None else '-'} % of their pixels a defect of their class.", "",
                  "| class | IoU (%) | F1 (%) | defects found | region precision |", "| --- | --- | --- | --- | --- |"]
        for name, v in per_class.items():
            r = by_class.get(name)
            found = f"{r['found']}/{r['gt_regions']}" if r else "-"
            precise = f"{r['correct']}/{r['predicted_regions']}" if r else "-"
            lines.append(f"| {name} | {_pct(v.get('iou'))} | {_pct(v.get('f1'))} | {found} | {precise} |")
    pictures = report.get("pictures")
    if pictures:
        kinds = [row.get("row") for row in pictures["rows"]]
        lines += ["", f"What it predicts, the worst {kinds.count('worst')} and the best {kinds.count('best')} "
                  f"{pictures['split']} images (image | ground truth | prediction):", "",
                  f"![predictions]({Path(pictures['path']).name})"]
    return lines


def _latency_lines(lat: dict[str, Any]) -> list[str]:
    stat = lat.get("statistic", "median")
    lines = [
        "",
        "## Latency on the target",
        "",
        *([f"The search scores the {stat} latency (see `latency_stat`); the median below also "
           "holds what other load on the device added while it was timed.", ""] if stat != "median" else []),
        "| what | ms |",
        "| --- | --- |",
        f"| estimate from the block latency table ({stat}) | {_ms(lat.get('estimated_ms'))} |",
        f"| measured end to end during the search (quick timing, {stat}) | {_ms(lat.get('finalist_measured_ms'))} |",
        f"| measured end to end (exported ONNX, full timing, **median**) | {_ms(lat.get('measured_ms'))} |",
        f"| measured end to end (exported ONNX, full timing, min) | {_ms(lat.get('measured_min_ms'))} |",
        f"| TensorRT engine (median) | {_ms(lat.get('engine_ms'))} |",
    ]
    warning = latency_disagreement(lat)
    if warning:
        lines += ["", f"**Warning:** {warning}"]
    if lat.get("engine_note"):
        lines += ["", f"TensorRT engine: {lat['engine_note']}"]
    if lat.get("fingerprint"):
        lines += ["", f"Device fingerprint: `{lat['fingerprint']}`"]
    return lines


def _settings_lines(report: dict[str, Any]) -> list[str]:
    """Search settings (and the time budget's plan), stages, artefacts."""
    lines: list[str] = []
    budgets = report.get("budgets", {})
    if budgets:
        lines += ["", "## Search settings", ""]
        lines += [f"- {k}: {v}" for k, v in budgets.items() if k != "plan"]
        plan = budgets.get("plan")
        if plan:
            lines += ["", f"Time budget {round(plan['budget_s'] / 60, 1):g} min, planned from costs measured at the start: "
                      f"supernet {plan['supernet_epochs']} epochs (~{plan['supernet_s'] / 60:.1f} min), search "
                      f"{plan['population']} x {plan['generations']} (~{plan['search_s'] / 60:.1f} min), retrain "
                      f"{plan['retrain_epochs']} epochs (~{plan['retrain_s'] / 60:.1f} min), block timing, export "
                      f"and margin ~{plan['fixed_s'] / 60:.1f} min."]
    lines += ["", "## Stages", "", "| stage | status | wall time (s) | note |", "| --- | --- | --- | --- |"]
    for st in report.get("stages", []):
        lines.append(f"| {st['name']} | {st['status']} | {st.get('wall_s', 0):.1f} | {st.get('note', '')} |")
    lines += ["", "## Artefacts", "", "| file | bytes | sha256 |", "| --- | --- | --- |"]
    for a in report.get("artefacts", []):
        lines.append(f"| `{a['path']}` | {a['bytes']:,} | `{a['sha256'][:16]}…` |")
    return lines


@dataclass(frozen=True)
class ConsoleSummary:
    """What a finished search tells its user on the console: the result line (stdout), notes and
    warnings (stderr). Read from the report here, so a caller prints it without its layout."""

    result: str
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def console_summary(report: dict[str, Any]) -> ConsoleSummary:
    acc, lat = report["accuracy"], report["latency"]
    split = "test" if acc.get("test") else "val"
    figures = acc.get(split) or {}
    result = (
        f"chosen {report['chosen']['summary']} (hash {report['chosen']['hash']}): "
        f"{split} mIoU {100 * (figures.get('miou') or 0):.2f}% "
        f"(defect classes {100 * (figures.get('miou_defects') or 0):.2f}%), mF1 {100 * (figures.get('mf1') or 0):.2f}%; "
        f"latency {lat['measured_ms']:.3f} ms median / {lat['measured_min_ms']:.3f} ms min measured on "
        f"'{report['target']['name']}' (estimated {lat['estimated_ms']:.3f} ms {lat['statistic']})"
    )
    notes = []
    signal = report.get("search_signal") or {}
    if signal.get("latency_decided"):
        notes.append(signal["summary"])
    race = report.get("race") or {}
    if race.get("entries"):
        notes.append(f"{race['note']}; {race['evidence']}")
    return ConsoleSummary(result, tuple(notes), (lat["warning"],) if lat.get("warning") else ())


def write_report(out_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path
