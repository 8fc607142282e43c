"""``mbq eval``: accuracy of a checkpoint at one or many precisions."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mbq.core.defaults import EVAL_BATCH

from ._common import CkptArg, DeviceOpt, JsonOpt, QuietOpt, SeedOpt


def eval_cmd(
    checkpoint: CkptArg,
    bit: Annotated[Optional[int], typer.Option("--bit", help="Evaluate at N-bit weights and activations (32 = FP).")] = None,
    bits: Annotated[Optional[str], typer.Option("--bits", help="Several widths (2,4,8) or 'all' (1..8 and FP).")] = None,
    wbits: Annotated[Optional[int], typer.Option("--wbits", help="Weight bits (with --abits).")] = None,
    abits: Annotated[Optional[int], typer.Option("--abits", help="Activation bits (with --wbits).")] = None,
    pairs_opt: Annotated[Optional[str], typer.Option("--pairs", help="'all': every valid (w, a) pair the checkpoint answers at (mebqat: 73/75).")] = None,
    episodes: Annotated[Optional[int], typer.Option(help="Few-shot checkpoints: test episodes per pair (default: its --test-episodes).")] = None,
    ways: Annotated[Optional[int], typer.Option(help="Few-shot: classes per episode (default: as trained).")] = None,
    shots: Annotated[Optional[int], typer.Option(help="Few-shot: support images per class (default: as trained).")] = None,
    queries: Annotated[Optional[int], typer.Option(help="Few-shot: query images per class (default: as trained).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--data", "--dataset", help="Evaluate on another dataset than the checkpoint's.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset folder (default: the one used in training).")] = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = EVAL_BATCH,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate on the first N test images only.")] = None,
    recalibrate_bn: Annotated[int, typer.Option(help="Re-estimate BN statistics on N training batches first.")] = 0,
    recalibrate_widths: Annotated[str, typer.Option(help="With --recalibrate-bn: 'all' widths; every width not trained ('untrained': EMQ's interpolated 3 and 5-7 and 1 and FP of a 2,4,8 model); or only those 'extrapolated' beyond the trained range (1 and FP). The others keep their data-free statistics.")] = "all",
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of top-1 against bit-width (needs matplotlib, the plot extra).")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
) -> None:
    """Evaluate a checkpoint on its test set at one or several bit-widths."""
    from mbq.core.config import check_bits, parse_bits
    from mbq.core.errors import MbqError

    chosen = [n for n, v in (("--bit", bit), ("--bits", bits), ("--wbits/--abits", wbits or abits),
                             ("--pairs", pairs_opt)) if v]
    if len(chosen) > 1:
        raise MbqError(f"use one of {' / '.join(chosen)}, not several")
    if (wbits is None) != (abits is None):
        raise MbqError("--wbits and --abits go together")
    if recalibrate_bn < 0 or batch_size < 1 or (limit is not None and limit < 1):
        raise MbqError("--recalibrate-bn must be >= 0, --batch-size and --limit >= 1")
    recalibrate_widths = recalibrate_widths.strip().lower()  # its values are checked by evaluate_checkpoint
    if recalibrate_widths != "all" and not recalibrate_bn:
        raise MbqError("--recalibrate-widths needs --recalibrate-bn N (how many batches)")
    try:
        pairs = None
        if bit is not None:
            pairs = [(check_bits(bit), None)]
        elif bits is not None:
            pairs = [(b, None) for b in parse_bits(bits)]
        elif wbits is not None:
            pairs = [(check_bits(wbits), check_bits(abits))]
    except ValueError as e:
        raise MbqError(str(e)) from None
    if pairs_opt is not None:
        if pairs_opt.strip().lower() != "all":
            raise MbqError(f"--pairs takes 'all' (got {pairs_opt}); use --wbits/--abits for one pair")
        pairs = "all"
    for flag, v, lo in (("--episodes", episodes, 1), ("--ways", ways, 2), ("--shots", shots, 1),
                        ("--queries", queries, 1)):
        if v is not None and v < lo:
            raise MbqError(f"{flag} must be at least {lo} (got {v})")
    if plot is not None and plot.parent and not plot.parent.exists():
        raise MbqError(f"--plot: folder {plot.parent} does not exist")

    from mbq.core.export.evaluate import evaluate_if_exported  # packed / ONNX: own runtime

    exported = evaluate_if_exported(
        checkpoint, fixed_flags=chosen + (["--recalibrate-bn"] if recalibrate_bn else []),
        dataset=dataset, data_dir=str(data_dir) if data_dir else None, batch_size=batch_size,
        limit=limit, device=device, seed=seed)
    from mbq.core.evaluate_checkpoint import evaluate_checkpoint

    result = exported or evaluate_checkpoint(checkpoint, pairs=pairs, dataset=dataset,
                                 data_dir=str(data_dir) if data_dir else None, batch_size=batch_size,
                                 limit=limit, recalibrate_bn=recalibrate_bn,
                                 recalibrate_widths=recalibrate_widths, device=device, seed=seed,
                                 all_requested=(bits or "").strip().lower() == "all",
                                 episodes=episodes, ways=ways, shots=shots, queries=queries)
    for note in result["notes"]:
        if not quiet:
            from ._common import log
            log(quiet, f"note: {note}")
    if plot is not None:
        from ._plot import plot_top1
        plot_top1(result["results"], plot, title=f"{result['method']} {result['arch']}")
    rows = result["results"]
    if json_out:
        from ._common import emit_json
        doc = dict(rows[0], checkpoint=result["checkpoint"], method=result["method"]) if len(rows) == 1 \
            else {k: v for k, v in result.items() if k != "notes"}
        emit_json(doc)
        return
    from rich.table import Table

    from ._common import stdout_console
    if rows and "ci95" in rows[0]:
        from ._fewshot_table import fewshot_table
        stdout_console().print(fewshot_table(result))
        return
    t = Table(title=f"{result['checkpoint']} — {result['method']} {result['arch']} on {result['dataset']}")
    for col in ("bits", "w", "a", "top-1 %", "loss", "images", "compression"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["label"], str(r["w"]), str(r["a"]), f"{r['top1']:.2f}", f"{r['loss']:.4f}",
                  str(r["n"]), f"{r['compression']:.2f}x")
    mixed = next((r["layer_bits"] for r in rows if r.get("layer_bits")), None)
    if mixed:
        t.caption = "weight bits per layer: " + ", ".join(f"{n} {b}" for n, b in mixed.items())
    stdout_console().print(t)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
