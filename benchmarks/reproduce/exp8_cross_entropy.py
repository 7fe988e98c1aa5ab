"""Experiment 8 — why a cross-entropy MLP did not separate rich from lazy (issue #14, part 1).

    python benchmarks/reproduce/exp8_cross_entropy.py             # ~15 min on one core (see REPRODUCTION.md)
    python benchmarks/reproduce/exp8_cross_entropy.py --quick     # ~1 min, 1 seed, short runs

Experiment 1 part B: an MLP 64-256-256-10 on digits reads rich 0.307 vs lazy 0.302 with cross-entropy
(CE) but 0.17 vs 0.46 with squared loss (MSE). Here the same contrast is followed over a long run
(into the terminal phase, training loss → 0), for 3 seeds, with the controls that isolate the cause.

Arms (each rich = Adam lr 1e-3 on every parameter, lazy = Adam lr 1e-2 on the head only, batch 64):

* ``ce`` / ``mse`` — the experiment-1 MLP, cross-entropy or squared loss on one-hot targets;
* ``ce+ls`` — cross-entropy with label smoothing 0.1;
* ``ce wide`` / ``mse wide`` — hidden width 1024 instead of 256.

At log-spaced steps, on the 1,437 training digits (where collapse happens) and the 360 test digits:
D_LR of the logits (SPEC), S_init, ‖θ‖², NC1, accuracy, training loss, and the controls

* rank r of the centred logits (default rtol) and their singular values σ_k/σ_1;
* the share of the centred logits' variance along the all-ones class direction (the direction
  softmax ignores: CE's gradient has zero class-sum, so that component of the head is never trained);
* D_LR with other choices of Ŷ, all through the public ``compute_dlr``: logits projected onto the
  sum-zero subspace ``Ŷ(I − 11ᵀ/C)`` (what softmax actually reads — "centred logits"), logits
  rescaled to unit norm per sample, softmax probabilities, and the default logits at rtol 1e-2.

The final spectra ρ_k/ρ_1 and π_k of every arm (seed 0) are plotted. Everything uses only
``dlr_hf.metric`` (``DLRAccumulator`` via ``common.measure``, ``compute_dlr``, ``LinearCKAAccumulator``,
``parameter_norm``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dlr_hf.metric import compute_dlr, parameter_norm  # noqa: E402

NAME = "exp8_cross_entropy"
C = 10
ARMS = {  # name: (loss, width, label smoothing)
    "ce": ("ce", 256, 0.0),
    "mse": ("mse", 256, 0.0),
    "ce+ls": ("ce", 256, 0.1),
    "ce wide": ("ce", 1024, 0.0),
    "mse wide": ("mse", 1024, 0.0),
}
CHECKPOINTS = (0, 100, 300, 1000, 3000, 10000, 20000)


def sum_zero(logits: torch.Tensor) -> torch.Tensor:
    """Logits with their per-sample class mean removed: Ŷ(I − 11ᵀ/C), the part softmax depends on."""
    return logits - logits.mean(dim=1, keepdim=True)


def unit_norm(logits: torch.Tensor) -> torch.Tensor:
    return logits / logits.norm(dim=1, keepdim=True).clamp_min(1e-30)


def loss_value(output: torch.Tensor, labels: torch.Tensor, loss: str, smoothing: float) -> torch.Tensor:
    if loss == "mse":
        return 0.5 * (output - nn.functional.one_hot(labels, output.shape[-1]).to(output.dtype)).pow(2).sum(-1).mean()
    return nn.functional.cross_entropy(output, labels, label_smoothing=smoothing)


def probe_head(phi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Least-squares readout of the centred one-hot labels from the centred features (p×C)."""
    targets = nn.functional.one_hot(labels, C).double()
    return torch.linalg.lstsq(phi - phi.mean(0), targets - targets.mean(0), rcond=1e-6, driver="gelsd").solution


def factors(spectrum, pi, rank: int) -> dict:
    """The exact split of SPEC's eigen form CKA = Σρ_kπ_k / (√r·‖ρ‖) into two factors in [0, 1]:

    * alignment ``a = Σ_k ρ_kπ_k / Σ_{k≤r} ρ_k`` — 1 iff the learned function reads exactly the top-r
      feature directions (the most a rank-r head can capture, since π_k ≤ 1 and Σπ_k = r);
    * ceiling ``c = Σ_{k≤r} ρ_k / (√r·‖ρ‖)`` — 1 iff the features have r equal eigenvalues and no
      others (low rank *and* isotropic); ``1 − c`` is the lowest D_LR any rank-r head could read.

    CKA = a·c, so D_LR = 1 − a·c. Computed from a ``DLRResult``'s ``spectrum``, ``pi`` and ``rank``.
    """
    rho, pi = np.asarray(spectrum, dtype=float), np.asarray(pi, dtype=float)
    top = float(rho[:rank].sum())
    return {"alignment": float((rho * pi).sum() / top), "ceiling": float(top / (np.sqrt(rank) * np.sqrt((rho**2).sum())))}


def readings(model: common.MLP, x: torch.Tensor, y: torch.Tensor, initial_features: torch.Tensor,
             probe: torch.Tensor | None = None) -> dict:
    """Every quantity of one measurement on one split (``common.measure`` = DLRAccumulator on the head).

    ``probe``: a least-squares readout fitted on the training split (fitted here when None).
    """
    m = common.measure(model, model.head, x, y)
    result, phi, logits = m.result, m.features, m.logits
    if probe is None:
        probe = probe_head(phi, y)
    centred = logits - logits.mean(0)
    sigma = torch.linalg.svdvals(centred)
    ones = torch.full((C, 1), C**-0.5, dtype=centred.dtype)
    row = {
        "dlr": result.dlr,
        "rank": result.rank,
        **factors(result.spectrum, result.pi, result.rank),
        "sigma_ratio": (sigma / sigma[0]).tolist(),  # σ_k/σ_1 of the centred logits
        "ones_share": float((centred @ ones).pow(2).sum() / centred.pow(2).sum()),
        "dlr_sum_zero": compute_dlr(phi, sum_zero(logits)).dlr,
        "rank_sum_zero": compute_dlr(phi, sum_zero(logits)).rank,
        "dlr_unit_norm": compute_dlr(phi, unit_norm(logits)).dlr,
        "dlr_softmax": compute_dlr(phi, torch.softmax(logits, dim=1)).dlr,
        "dlr_rtol1e-2": compute_dlr(phi, logits, rtol=1e-2).dlr,
        "dlr_probe": compute_dlr(phi, phi @ probe).dlr,
        "rank_rtol1e-2": compute_dlr(phi, logits, rtol=1e-2).rank,
        "s_init": common.s_init(initial_features, phi),
        "nc1": result.nc1,
        "accuracy": result.accuracy,
        "effective_rank": result.effective_rank,
        "logit_norm": float(logits.norm(dim=1).mean()),
        "result": result,
        "probe": probe,
    }
    return row


def run_arm(arm: str, regime: str, seed: int, checkpoints=CHECKPOINTS, log=print) -> dict:
    loss, width, smoothing = ARMS[arm]
    common.setup(seed)
    data = common.digits()
    model = common.MLP([64, width, width])
    init_train = common.measure(model, model.head, data.train_flat, compute=False).features
    init_test = common.measure(model, model.head, data.test_flat, compute=False).features
    parameters = list(model.head.parameters() if regime == "lazy" else model.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=1e-2 if regime == "lazy" else 1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    x, y = data.train_flat, data.train_labels
    order, position, batch_size = torch.randperm(len(y), generator=generator), 0, 64
    trajectory, finals = [], {}
    timer = common.Timer()
    for step in range(max(checkpoints) + 1):
        if step in checkpoints:
            with torch.no_grad():
                model.eval()
                train_loss = float(loss_value(model(x), y, loss, smoothing))
            train = readings(model, x, y, init_train)
            test = readings(model, data.test_flat, data.test_labels, init_test, train["probe"])
            train.pop("probe"), test.pop("probe")
            finals = {"train": train.pop("result"), "test": test.pop("result")}
            trajectory.append({"step": step, "train_loss": train_loss, "param_norm_sq": parameter_norm(model),
                               "train": train, "test": test})
            log(f"{arm:9s} {regime:4s} seed {seed} step {step:6d} loss {train_loss:.2e} acc {train['accuracy']:.3f}/"
                f"{test['accuracy']:.3f} D_LR train {train['dlr']:.3f} test {test['dlr']:.3f} | sum-zero "
                f"{train['dlr_sum_zero']:.3f} unit {train['dlr_unit_norm']:.3f} softmax {train['dlr_softmax']:.3f} "
                f"rtol1e-2 {train['dlr_rtol1e-2']:.3f} (r {train['rank_rtol1e-2']}) probe {train['dlr_probe']:.3f} | 1-share {train['ones_share']:.3f} "
                f"a {train['alignment']:.3f} c {train['ceiling']:.3f} σ10/σ1 {train['sigma_ratio'][-1]:.1e} S_init {train['s_init']:.3f} NC1 {train['nc1']:.3f} "
                f"|ŷ| {train['logit_norm']:.1f}  {timer.seconds:.0f} s", flush=True)
            model.train()
        if step == max(checkpoints):
            break
        if position + batch_size > len(y):
            order, position = torch.randperm(len(y), generator=generator), 0
        batch = order[position : position + batch_size]
        position += batch_size
        value = loss_value(model(x[batch]), y[batch], loss, smoothing)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    model.eval()
    spectrum = {split: {"rho": finals[split].spectrum, "pi": finals[split].pi} for split in finals}
    return {"arm": arm, "regime": regime, "seed": seed, "trajectory": trajectory, "spectrum": spectrum,
            "seconds": timer.seconds}


def run(arms=tuple(ARMS), seeds=(0, 1, 2), checkpoints=CHECKPOINTS, log=print) -> list[dict]:
    return [run_arm(arm, regime, seed, checkpoints, log) for arm in arms for regime in ("rich", "lazy") for seed in seeds]


# -- summary -------------------------------------------------------------------------------------
KEYS = ("dlr", "alignment", "ceiling", "dlr_sum_zero", "dlr_unit_norm", "dlr_softmax", "dlr_rtol1e-2", "dlr_probe", "s_init", "nc1", "accuracy", "ones_share")


def summary_rows(runs: list[dict], split: str = "train") -> list[dict]:
    """Final values per (arm, regime): mean ± std over seeds."""
    rows = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        for regime in ("rich", "lazy"):
            group = [r for r in runs if r["arm"] == arm and r["regime"] == regime]
            if not group:
                continue
            last = [r["trajectory"][-1] for r in group]
            row = {"arm": arm, "regime": regime, "seeds": len(group), "steps": last[0]["step"],
                   "train loss": float(np.mean([t["train_loss"] for t in last])),
                   "‖θ‖²": float(np.mean([t["param_norm_sq"] for t in last])),
                   "rank r": int(np.median([t[split]["rank"] for t in last])),
                   "σ_C/σ_1": float(np.mean([t[split]["sigma_ratio"][-1] for t in last]))}
            for key in KEYS:
                values = [t[split][key] for t in last]
                row[key] = f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else float(values[0])
            row["test accuracy"] = float(np.mean([t["test"]["accuracy"] for t in last]))
            rows.append(row)
    return rows


def factor_table(path) -> str:
    """Alignment and ceiling at the last checkpoint of every run of a saved JSON (runs before the
    factors were part of ``readings``), as a markdown table; mean ± std over seeds."""
    import json

    runs = json.loads(Path(path).read_text())["runs"]
    rows = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        for regime in ("rich", "lazy"):
            group = [r for r in runs if r["arm"] == arm and r["regime"] == regime]
            values = [factors(r["spectrum"]["train"]["rho"], r["spectrum"]["train"]["pi"], r["trajectory"][-1]["train"]["rank"])
                      for r in group]
            dlr = [r["trajectory"][-1]["train"]["dlr"] for r in group]
            row = {"arm": arm, "regime": regime, "seeds": len(group), "steps": group[0]["trajectory"][-1]["step"]}
            for key, column in (("dlr", "D_LR = 1 − a·c"), ("alignment", "alignment a"), ("ceiling", "ceiling c")):
                vals = dlr if key == "dlr" else [v[key] for v in values]
                row[column] = f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if len(vals) > 1 else vals[0]
            rows.append(row)
    return common.markdown_table(rows, list(rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, steps up to 1000, CE/MSE only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--steps", type=int, default=max(CHECKPOINTS), help="last checkpoint")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--factors", action="store_true", help="print the alignment/ceiling table of the saved results")
    args = parser.parse_args()
    if args.factors:
        for tag in ("", "_wide"):
            path = common.RESULTS / f"{NAME}{tag}.json"
            if path.exists():
                print(f"## {path.name}\n\n{factor_table(path)}\n")
        return
    timer = common.Timer()
    if args.quick:
        runs = run(("ce", "mse"), (0,), (0, 100, 1000))
    else:
        runs = run(tuple(args.arms), tuple(args.seeds), tuple(c for c in CHECKPOINTS if c < args.steps) + (args.steps,))
    columns_extra = ["arm", "regime", "seeds", "steps", "train loss", "‖θ‖²", "test accuracy", "dlr", "alignment", "ceiling", "s_init", "nc1",
                     "rank r", "σ_C/σ_1", "ones_share", "dlr_sum_zero", "dlr_unit_norm", "dlr_softmax", "dlr_rtol1e-2", "dlr_probe"]
    train_rows, test_rows = summary_rows(runs, "train"), summary_rows(runs, "test")
    trajectory_rows = [
        {"arm": r["arm"], "regime": r["regime"], "seed": r["seed"], "step": t["step"], "train loss": t["train_loss"],
         "‖θ‖²": t["param_norm_sq"], "train acc": t["train"]["accuracy"], "test acc": t["test"]["accuracy"],
         "D_LR train": t["train"]["dlr"], "D_LR test": t["test"]["dlr"], "D_LR sum-zero train": t["train"]["dlr_sum_zero"],
         "D_LR unit-norm train": t["train"]["dlr_unit_norm"], "D_LR probe train": t["train"]["dlr_probe"], "S_init train": t["train"]["s_init"],
         "NC1 train": t["train"]["nc1"], "r": t["train"]["rank"], "σ_C/σ_1": t["train"]["sigma_ratio"][-1],
         "1-share": t["train"]["ones_share"]}
        for r in runs for t in r["trajectory"]
    ]
    notes = (
        "Final values (last checkpoint), mean ± std over seeds, measured on the **1,437 training digits**. "
        "`dlr` is D_LR as SPEC defines it (Ŷ = logits, rtol 1e-6); `dlr_sum_zero` uses the sum-zero logits "
        "Ŷ(I − 11ᵀ/C); `dlr_unit_norm` logits rescaled to unit norm per sample; `dlr_softmax` the softmax "
        "probabilities; `dlr_rtol1e-2` the logits at a rank tolerance of 1e-2; `dlr_probe` the features read by a "
        "least-squares probe of the centred one-hot labels fitted on the training digits (Ŷ = Φ·B, B = lstsq), "
        "so it depends on the features only, not on how far the trained head has got. `ones_share`: share of the "
        "centred logits' variance along the all-ones class direction. `σ_C/σ_1`: smallest/largest singular "
        "value of the centred logits.\n\n## Same, on the 360 test digits\n\n"
        + common.markdown_table(test_rows, columns_extra)
        + "\n\n## Trajectories (training digits unless marked)\n\n"
        + common.markdown_table(trajectory_rows, list(trajectory_rows[0]))
    )
    name = NAME + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    common.write_results(name, "Experiment 8 — cross-entropy vs squared loss, rich vs lazy (digits MLP)", train_rows,
                         columns_extra, notes=notes, extra={"runs": runs, "args": vars(args)}, runtime_s=timer.seconds)
    _plot(runs, name)


def _plot(runs: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ce": "tab:red", "mse": "tab:blue", "ce+ls": "tab:orange", "ce wide": "tab:purple", "mse wide": "tab:cyan"}
    panels = [("dlr", "D_LR (logits, SPEC)"), ("dlr_probe", "D_LR, least-squares probe readout"),
              ("s_init", "S_init"), ("nc1", "NC1 (log)"), ("accuracy", "test accuracy"), ("loss", "training loss (log)"),
              ("param_norm_sq", "‖θ‖² (log)"), ("dlr_sum_zero", "D_LR, sum-zero logits Ŷ(I − 11ᵀ/C)")]
    figure, axes = plt.subplots(2, 4, figsize=(19, 8.5), constrained_layout=True)
    for axis, (key, title) in zip(axes.flat, panels):
        for r in runs:
            steps = [max(t["step"], 10) for t in r["trajectory"]]
            if key == "loss":
                values = [t["train_loss"] for t in r["trajectory"]]
            elif key == "param_norm_sq":
                values = [t["param_norm_sq"] for t in r["trajectory"]]
            elif key == "accuracy":
                values = [t["test"]["accuracy"] for t in r["trajectory"]]
            else:
                values = [t["train"][key] for t in r["trajectory"]]
            label = f"{r['arm']} {r['regime']}" if r["seed"] == runs[0]["seed"] else None
            axis.plot(steps, values, "-" if r["regime"] == "rich" else "--", color=colours.get(r["arm"], "k"),
                      alpha=0.8, lw=1.6, marker="o" if r["regime"] == "rich" else "x", ms=3, label=label)
        axis.set_xscale("log")
        if key in ("nc1", "loss", "param_norm_sq"):
            axis.set_yscale("log")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("step (step 0 drawn at 10)")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, ncol=2)
    figure.suptitle("Cross-entropy vs squared loss, rich (solid) vs lazy (dashed), MLP on digits; D_LR etc. on the training digits, every seed")
    common.savefig(figure, name)

    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 4.8), constrained_layout=True)
    first_seed = runs[0]["seed"]
    for r in runs:
        if r["seed"] != first_seed:
            continue
        rho = np.asarray(r["spectrum"]["train"]["rho"])
        pi = np.asarray(r["spectrum"]["train"]["pi"])
        k = np.arange(1, len(rho) + 1)
        style = "-" if r["regime"] == "rich" else "--"
        left.loglog(k, np.clip(rho / rho[0], 1e-12, None), style, color=colours.get(r["arm"], "k"), label=f"{r['arm']} {r['regime']}")
        right.semilogx(k[:60], pi[:60], style, color=colours.get(r["arm"], "k"), marker=".", label=f"{r['arm']} {r['regime']}")
    for axis in (left, right):
        axis.axvline(C, color="grey", ls=":")
        axis.grid(alpha=0.3)
        axis.set_xlabel("eigen-direction k (k = C dotted)")
    left.set_ylim(1e-6, 1.5)
    left.set_title("feature spectrum ρ_k/ρ_1 at the end (training digits, seed %d)" % first_seed)
    right.set_title("π_k = ‖P_Y e_k‖² at the end (first 60 directions)")
    left.legend(fontsize=7, ncol=2)
    common.savefig(figure, name + "_spectra")


if __name__ == "__main__":
    main()
