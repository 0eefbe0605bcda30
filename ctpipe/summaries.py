"""The last lines of ``ctpipe prep`` / ``ctpipe infer``: a short human summary, or one JSON object (``--json``).

Each ``*_summary`` function turns a command's result into ``(lines, payload)``: lines a person reads
(what was written, what was skipped and why, where the report is) and a JSON-ready dict for scripts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

MAX_LISTED = 10  # skipped files named one per line; the rest are in the report

Summary = tuple[list[str], dict[str, Any]]


def jsonable(value: Any) -> Any:
    """Dataclasses, paths, tuples and numpy scalars -> plain JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def emit(summary: Summary, as_json: bool, stream: TextIO | None = None) -> None:
    """Print the human lines, or (``as_json``) the payload as one JSON line."""
    stream = stream if stream is not None else sys.stdout
    lines, payload = summary
    if as_json:
        print(json.dumps(jsonable(payload)), file=stream, flush=True)
    else:
        print("\n".join(lines), file=stream, flush=True)


def _skipped_lines(skipped: Sequence[tuple[Any, str]], report: Path | None) -> list[str]:
    lines = [f"  skipped {file}: {reason}" for file, reason in list(skipped)[:MAX_LISTED]]
    if len(skipped) > MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - MAX_LISTED} more" + (f" (all in {report})" if report else ""))
    return lines


def _finish_lines(manifest: Path | None, report: Path | None) -> list[str]:
    if manifest is None:
        return ["manifest: not yet written (other array tasks are still running; the last one to finish writes it)"]
    return [f"manifest: {manifest}"] + ([f"report: {report}"] if report is not None else [])


def prep_summary(kind: str, result: Any) -> Summary:
    """Summary of a ``PrepResult`` of ``prep lodopab`` / ``prep drr`` / ``prep nifti-pairs``.

    written = converted by this call; kept = already complete from an earlier run (not redone);
    skipped = bad input files, with the reason.
    """
    unit = {"lodopab": "shards", "drr": "file groups", "nifti-pairs": "volumes"}[kind]
    if kind == "nifti-pairs":
        kept, bad = result.reused, result.skipped
    else:
        kept, bad = result.skipped, getattr(result, "bad_files", ())
    report = getattr(result, "report", None)
    task = f" (array task {result.task_index}/{result.n_tasks})" if getattr(result, "n_tasks", 1) > 1 else ""
    head = (f"prep {kind}{task}: {len(result.written)} {unit} written, {len(kept)} kept from an earlier run, "
            f"{len(bad)} input files skipped -> {result.out}")
    lines = [head, *_skipped_lines(bad, report), *_finish_lines(result.manifest, report)]
    payload = {"command": f"prep {kind}", "out": result.out, "written": len(result.written), "kept": len(kept),
               "skipped": [{"file": f, "reason": r} for f, r in bad], "manifest": result.manifest,
               "report": report, "result": result}
    return lines, payload


def synth_lodopab_summary(info: Mapping[str, Any]) -> Summary:
    counts = ", ".join(f"{part} {n}" for part, n in info["samples"].items())
    lines = [f"prep synth-lodopab: wrote {sum(info['samples'].values())} slices ({counts}) in {len(info['files'])} "
             f"files to {info['out']}",
             f"next: ctpipe prep lodopab --src {info['out']} --out SHARDS"]
    return lines, {"command": "prep synth-lodopab", **info}


def synth_files_summary(kind: str, out: Path, files: Sequence[Path], next_step: str) -> Summary:
    lines = [f"prep {kind}: wrote {len(files)} files under {out}", f"next: {next_step}"]
    return lines, {"command": f"prep {kind}", "out": out, "written": len(files), "files": list(files)}


def infer_folder_summary(result: Any, out_dir: Path, means: Mapping[str, float]) -> Summary:
    """``infer pix2pix --input-dir``: volumes written, skipped (and where the list is), metrics file."""
    lines = [f"infer pix2pix: {len(result.outputs)} volumes written to {out_dir}, {len(result.skipped)} skipped"]
    lines += _skipped_lines(result.skipped, result.skipped_csv)
    if result.skipped_csv is not None:
        lines.append(f"skipped list: {result.skipped_csv}")
    if result.metrics_csv is not None:
        lines.append(f"metrics (one row per volume, model and identity baseline): {result.metrics_csv}")
        lines += [f"  mean {name} = {value:.6g}" for name, value in means.items()]
    payload = {"command": "infer pix2pix", "out_dir": out_dir, "written": list(result.outputs),
               "skipped": [{"file": f, "reason": r} for f, r in result.skipped], "skipped_csv": result.skipped_csv,
               "metrics_csv": result.metrics_csv, "means": dict(means)}
    return lines, payload


def infer_volume_summary(out: Path) -> Summary:
    return [f"infer pix2pix: wrote {out}"], {"command": "infer pix2pix", "written": [out]}


def infer_xray2ct_summary(result: Any) -> Summary:
    shape = "x".join(str(s) for s in result.shape)
    lines = [f"infer xray2ct: wrote {result.path} ({result.model}, {shape} voxels of {result.spacing_mm:.3g} mm, "
             f"HU window {result.hu_window[0]:g}..{result.hu_window[1]:g})"]
    return lines, {"command": "infer xray2ct", **jsonable(result)}
