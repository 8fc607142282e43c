"""Rendering of few-shot ``mbq eval`` results (mean episode accuracy ± 95% CI)."""
from __future__ import annotations


def fewshot_table(result: dict):
    from rich.table import Table

    rows = result["results"]
    r0 = rows[0]
    t = Table(title=f"{result['checkpoint']} — {result['method']} {result['arch']} on {result['dataset']}: "
                    f"{r0['ways']}-way {r0['shots']}-shot, {r0['queries']} queries, "
                    f"{r0['episodes']} episodes")
    for col in ("bits", "w", "a", "accuracy %", "± 95% CI", "compression"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["label"], str(r["w"]), str(r["a"]), f"{r['top1']:.2f}", f"{r['ci95']:.2f}",
                  f"{r['compression']:.2f}x")
    return t
