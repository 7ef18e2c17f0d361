"""`edge-sponsor study describe|survival|glm|cox|iptw`: run an analysis plan across the federation.

Every site of the federation file runs one statistics task of the plan package on its
dataset; the releases are pooled into a Table 1 (``describe``) or Kaplan-Meier curves with
median survival and a log-rank test (``survival``), written as JSON and as one HTML page
(docs/statistics.md). ``glm`` runs ``--rounds`` dp_glm tasks per site, one per step
(lower-bound or Newton-Raphson, ``--method``) of the plan's logistic model, and reports its
coefficients; ``cox`` does the same for a Cox model, each site with its own baseline, and
reports hazard ratios with a forest plot. ``iptw`` runs a weighted plan: the propensity model,
the balance before and after weighting (a love plot), weighted Kaplan-Meier curves per arm and
the weighted Cox model.
Exit codes: 0 done (sites that refused are listed); 1 no site returned a release;
2 bad federation file, plan package, credentials or options.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.cli.exit_codes import ExitCode
from agent.cli.settings import UsageError
from agent.durable import write_public
from agent.packages.manifest import TaskKind
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.cox_tasks import AVERAGE_LAST as COX_AVERAGE_LAST
from edge_sponsor.coordinator.cox_tasks import DEFAULT_ROUNDS as COX_ROUNDS
from edge_sponsor.coordinator.cox_tasks import MIN_ROUNDS as COX_MIN_ROUNDS
from edge_sponsor.coordinator.cox_tasks import cox_design, run_cox
from edge_sponsor.coordinator.federation import Federation, load_federation
from edge_sponsor.coordinator.glm_tasks import BOUND_ROUNDS, DEFAULT_ROUNDS, MAX_ROUNDS, glm_design, run_glm
from edge_sponsor.coordinator.iptw_tasks import PROPENSITY_ROUNDS, check_weighted, run_iptw
from edge_sponsor.coordinator.plan_tasks import PlanPackage, PlanPackageError, SiteOutcome, plan_profile, run_plan
from edge_sponsor.coordinator.privacy_plan import PlannedTask, project
from edge_sponsor.coordinator.study import open_clients
from edge_sponsor.statistics.cox import CoxBaseline, CoxOptions
from edge_sponsor.statistics.cox_analysis import CoxAnalysis, CoxRound
from edge_sponsor.statistics.glm import GlmAnalysis, GlmMethod, GlmRound
from edge_sponsor.statistics.iptw_analysis import IptwAnalysis
from edge_sponsor.statistics.report import new_report, render_html
from edge_sponsor.statistics.survival import analyse_survival
from edge_sponsor.statistics.table_one import table_one

USAGE_ERRORS: tuple[type[Exception], ...] = (PlanPackageError,)

_KINDS = {"describe": TaskKind.DP_DESCRIBE, "survival": TaskKind.DP_SURVIVAL}


class NoReleaseError(Exception):
    """No site returned a release: there is nothing to estimate (exit code 1)."""


FAILURE_ERRORS: tuple[type[Exception], ...] = (NoReleaseError,)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "study",
        help="run an analysis plan across the agents: Table 1, Kaplan-Meier, logistic regression",
        description="Run a signed analysis plan (edge-sponsor plan build) at every agent of a federation "
        "file and pool the noisy releases into estimates with confidence intervals that include the noise.",
    )
    commands = parser.add_subparsers(dest="study_command", required=True, metavar="COMMAND")
    for name, words in (
        ("describe", "the cohort's Table 1: counts, means, SDs, medians, proportions, missingness per stratum"),
        ("survival", "Kaplan-Meier curves per stratum, median survival and follow-up, log-rank test"),
    ):
        command = commands.add_parser(name, help=words, description=f"Run dp_{name} at every site: {words}.")
        _plan_arguments(
            command,
            "plan package (.zip), signed",
            "sigma of each site's release (one task costs the ε of one Gaussian at sigma, q = 1)",
        )
        _output_arguments(command)
        command.set_defaults(handler=run_study_command, kind=_KINDS[name])
    words = "logistic regression of the plan's model by DP lower-bound or Newton steps: coefficients, odds ratios, CIs"
    command = commands.add_parser(
        "glm",
        help=words,
        description=f"Run --rounds dp_glm tasks at every site, each with the current coefficients: {words}. "
        "Every round is charged at every site.",
    )
    _plan_arguments(
        command,
        "plan package (.zip) with a model, signed",
        "sigma of each site's release in each round (one round costs the ε of one Gaussian at sigma, q = 1)",
    )
    command.add_argument(
        "--method",
        choices=[m.value for m in GlmMethod],
        default=GlmMethod.BOUND.value,
        help="bound (default): every round steps on the information released in the first round, at β = 0, "
        "which bounds it everywhere, and the estimate is the mean of the last iterates; newton: a Newton step "
        "on each round's noisy information (needs far more patients or ε: bench/glm_accuracy.py)",
    )
    command.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="T",
        help=f"steps, each one task per site (default {BOUND_ROUNDS} for bound, {DEFAULT_ROUNDS} for newton)",
    )
    command.add_argument(
        "--average-last",
        type=int,
        default=None,
        metavar="K",
        help="report the mean of the last K rounds' estimates (less noise, no extra ε; the rounds averaged must "
        "have converged); default: the last half of the rounds for bound, 1 (the last step) for newton",
    )
    _output_arguments(command)
    command.set_defaults(handler=run_glm_command)
    words = "Cox proportional hazards of the plan's survival outcome, a baseline per site: hazard ratios, CIs"
    command = commands.add_parser(
        "cox",
        help=words,
        description=f"Run --rounds dp_glm tasks at every site, each with the site's own coefficients: {words}. "
        "Every round is charged at every site.",
    )
    _plan_arguments(
        command,
        "plan package (.zip) with a Cox model, signed",
        "sigma of each site's release in each round (one round costs the ε of one Gaussian at sigma, q = 1)",
    )
    command.add_argument(
        "--rounds",
        type=int,
        default=COX_ROUNDS,
        metavar="T",
        help=f"steps, each one task per site, {COX_MIN_ROUNDS} or more (default {COX_ROUNDS})",
    )
    command.add_argument(
        "--average-last",
        type=int,
        default=None,
        metavar="K",
        help="report the mean of the last K rounds' one-step estimates (less noise, no extra ε; the rounds "
        f"averaged must have converged); default: {COX_AVERAGE_LAST}, or all the rounds if fewer",
    )
    command.add_argument(
        "--baseline",
        choices=[b.value for b in CoxBaseline],
        default=CoxOptions().baseline.value,
        help="stratified: each site its own baseline hazard per interval; proportional: one baseline shape, "
        "a level per site (fewer numbers to estimate, assumes the sites' baselines proportional)",
    )
    _output_arguments(command)
    command.set_defaults(handler=run_cox_command)
    words = (
        "propensity-weighted comparison of the plan's treatment arms: the propensity model, balance before and "
        "after weighting, weighted Kaplan-Meier curves per arm and the weighted Cox hazard ratio"
    )
    command = commands.add_parser(
        "iptw",
        help=words,
        description=f"Run a weighted plan (plan.weighting) at every site: {words}. Every task is charged at every "
        "site: the propensity model's rounds, one weighted description, one weighted survival task (a plan with "
        "survival) and the Cox model's rounds (a plan whose model is Cox).",
    )
    _plan_arguments(
        command,
        "plan package (.zip) with weighting, signed",
        "sigma of each site's release in every task (each costs the ε of one Gaussian at sigma, q = 1)",
    )
    for stage, words in (("balance", "the weighted description"), ("survival", "the weighted survival task")):
        command.add_argument(
            f"--{stage}-noise-multiplier",
            type=float,
            default=None,
            metavar="SIGMA",
            help=f"sigma of {words} alone (one task: a smaller one buys a far less noisy {stage} for a small share "
            "of the budget; default: --noise-multiplier)",
        )
    command.add_argument(
        "--propensity-rounds",
        type=int,
        default=PROPENSITY_ROUNDS,
        metavar="T",
        help=f"the propensity model's lower-bound steps, each one task per site (default {PROPENSITY_ROUNDS}; "
        "the last half averaged)",
    )
    command.add_argument(
        "--rounds",
        type=int,
        default=COX_ROUNDS,
        metavar="T",
        help=f"the weighted Cox model's steps, {COX_MIN_ROUNDS} or more (default {COX_ROUNDS})",
    )
    command.add_argument(
        "--average-last",
        type=int,
        default=None,
        metavar="K",
        help=f"the Cox fit averages the last K rounds' one-step estimates (default {COX_AVERAGE_LAST})",
    )
    command.add_argument(
        "--baseline",
        choices=[b.value for b in CoxBaseline],
        default=CoxOptions().baseline.value,
        help="the Cox model's baselines: stratified (each site its own) or proportional (one shape, a level per site)",
    )
    _output_arguments(command)
    command.set_defaults(handler=run_iptw_command)


def _plan_arguments(command: argparse.ArgumentParser, plan_words: str, sigma_words: str) -> None:
    """What every study command runs: the federation, the plan package and the noise multiplier."""
    command.add_argument("federation", type=Path, help="federation file (TOML)")
    command.add_argument("--plan", type=Path, required=True, help=plan_words)
    command.add_argument("--noise-multiplier", type=float, required=True, metavar="SIGMA", help=sigma_words)


def _output_arguments(command: argparse.ArgumentParser) -> None:
    """Where every study command writes its results, and how it names its run."""
    command.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results as JSON")
    command.add_argument("--html", type=Path, default=None, metavar="FILE", help="write the HTML report")
    command.add_argument("--title", default=None, help="the report's title (default: the plan's name)")
    command.add_argument("--run-id", default=None, help="run id recorded in every agent's audit log")


def _site_line(outcome: SiteOutcome) -> str:
    if outcome.release is not None:
        spent = f"ε charged {outcome.epsilon_charged:.4g} (budget spent {outcome.budget_epsilon_spent:.4g})"
        return f"  {outcome.site}: ok, {spent}"
    return f"  {outcome.site}: {outcome.status}: {outcome.detail}"


def _check_common(args: argparse.Namespace) -> None:
    """What every study command refuses before any site is asked: a σ that is not a positive
    finite number, and outputs that could not be written once the ε is spent."""
    if not (math.isfinite(args.noise_multiplier) and args.noise_multiplier > 0):
        raise UsageError(f"--noise-multiplier must be a positive number, got {args.noise_multiplier}")
    if args.json is None and args.html is None:
        raise UsageError("give --json FILE, --html FILE or both: where the results go")
    for option, path in (("--json", args.json), ("--html", args.html)):
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f"{option} {path}: is a directory, not a file to write")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: its folder {folder} does not exist or cannot be written")


def run_study_command(args: argparse.Namespace) -> int:
    _check_common(args)
    federation = load_federation(args.federation)
    package = PlanPackage.from_file(args.plan)
    kind: TaskKind = args.kind
    package.layout(kind)  # refuses a kind the package does not offer before any site is asked
    if package.plan.weighting is not None:
        raise PlanPackageError(
            f"{package.manifest.name} is a weighted plan (plan.weighting): its tasks take the propensity model's "
            "coefficients; run it with study iptw"
        )
    run_id = args.run_id or f"{federation.name}-{kind.value}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    clients = open_clients(federation)
    try:
        _check_budgets(federation, clients, PlannedTask(plan_profile(kind, args.noise_multiplier), 1))
        outcomes = run_plan(federation, clients, package, kind, args.noise_multiplier, run_id=run_id)
    finally:
        for client in clients.values():
            client.close()
    print(f"{kind.value} of {package.manifest.name} {package.manifest.version} (run {run_id}):")
    for outcome in outcomes:
        print(_site_line(outcome))
    releases = [o.release for o in outcomes if o.release is not None]
    if not releases:
        raise NoReleaseError("no site returned a release: nothing to estimate")
    left_out = [f"{o.site}: {o.status}: {o.detail}" for o in outcomes if o.release is None]
    notes = [
        f"{len(releases)} of {len(outcomes)} sites pooled; noise multiplier {args.noise_multiplier:g} at each.",
        *(f"left out {line}" for line in left_out),
    ]
    title = args.title or f"{package.manifest.name} {package.manifest.version}"
    if kind is TaskKind.DP_SURVIVAL:
        report = new_report(title, survival=analyse_survival(package.plan, releases), notes=notes)
    else:
        report = new_report(title, table_one=table_one(package.plan, releases), notes=notes)
    _write(args.json, report.to_json())
    _write(args.html, render_html(report))
    return ExitCode.SUCCESS


def _check_budgets(
    federation: Federation, clients: Mapping[str, AgentClient], task: PlannedTask | Sequence[PlannedTask]
) -> None:
    """Before anything is spent: a study that would take a site over its budget (all its tasks
    composed) is not started (NoReleaseError naming the sites); a site that cannot say is warned about."""
    projections = project(federation, clients, [task] if isinstance(task, PlannedTask) else list(task))
    for projection in projections:
        if projection.problem and not projection.refused:
            print(f"edge-sponsor: warning: {projection.site}: cannot say: {projection.problem}", file=sys.stderr)
    over = [p for p in projections if p.refused or (not p.problem and not p.fits)]
    if over:
        names = ", ".join(
            f"{p.site} ({p.problem if p.refused else f'{p.epsilon_projected:.3g} > {p.epsilon_limit:g}'})" for p in over
        )
        raise NoReleaseError(
            f"the study would take {names} over the privacy budget or out of its policy; nothing was spent"
        )


def run_glm_command(args: argparse.Namespace) -> int:
    _check_common(args)
    method = GlmMethod(args.method)
    if args.rounds is None:
        args.rounds = BOUND_ROUNDS if method is GlmMethod.BOUND else DEFAULT_ROUNDS
    if args.average_last is None:
        args.average_last = max(1, args.rounds // 2) if method is GlmMethod.BOUND else 1
    _check_rounds(args)
    federation = load_federation(args.federation)
    package = PlanPackage.from_file(args.plan)
    # Refuses a package without a model before any site is asked.
    package.layout(TaskKind.DP_GLM)
    glm_design(package)
    run_id = args.run_id or f"{federation.name}-dp_glm-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    clients = open_clients(federation)

    progress = _progress(args.rounds)

    try:
        # All rounds are planned at once: the agents compose them with what each group has spent.
        planned = PlannedTask(plan_profile(TaskKind.DP_GLM, args.noise_multiplier), args.rounds)
        _check_budgets(federation, clients, planned)
        analysis = run_glm(
            federation,
            clients,
            package,
            args.noise_multiplier,
            rounds=args.rounds,
            run_id=run_id,
            average_last=args.average_last,
            method=method,
            on_round=progress,
        )
    finally:
        for client in clients.values():
            client.close()
    fit = analysis.fit
    notes = _model_notes(f"dp_glm of {package.manifest.name} {package.manifest.version} (run {run_id})", analysis, "")
    if fit is None:  # _model_notes refused it already; for the type checker
        raise NoReleaseError("no round was completed")
    for c in fit.original.coefficients:
        print(f"  {c.name}: {c.estimate:.4g} (SE {c.se:.3g}; {c.lower:.4g} to {c.upper:.4g}), OR {c.odds_ratio:.4g}")
    title = args.title or f"{package.manifest.name} {package.manifest.version}"
    report = new_report(title, glm=analysis, notes=notes)
    _write(args.json, report.to_json())
    _write(args.html, render_html(report))
    return ExitCode.SUCCESS


def run_cox_command(args: argparse.Namespace) -> int:
    _check_common(args)
    if args.average_last is None:
        args.average_last = max(1, min(COX_AVERAGE_LAST, args.rounds))
    _check_rounds(args, COX_MIN_ROUNDS)
    federation = load_federation(args.federation)
    package = PlanPackage.from_file(args.plan)
    # Refuses a package without a Cox model before any site is asked.
    package.layout(TaskKind.DP_GLM)
    cox_design(package)
    run_id = args.run_id or f"{federation.name}-cox-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    clients = open_clients(federation)

    progress = _progress(args.rounds)

    try:
        planned = PlannedTask(plan_profile(TaskKind.DP_GLM, args.noise_multiplier), args.rounds)
        _check_budgets(federation, clients, planned)
        analysis = run_cox(
            federation,
            clients,
            package,
            args.noise_multiplier,
            rounds=args.rounds,
            run_id=run_id,
            options=CoxOptions(baseline=CoxBaseline(args.baseline)),
            average_last=args.average_last,
            on_round=progress,
        )
    finally:
        for client in clients.values():
            client.close()
    fit = analysis.fit
    title = f"cox of {package.manifest.name} {package.manifest.version} (run {run_id})"
    notes = _model_notes(title, analysis, f"; baseline {args.baseline}")
    if fit is None:  # _model_notes refused it already; for the type checker
        raise NoReleaseError("no round was completed")
    for c in fit.original.coefficients:
        print(
            f"  {c.name}: HR {c.hazard_ratio:.4g} ({c.hazard_ratio_lower:.4g} to {c.hazard_ratio_upper:.4g}); "
            f"log HR {c.estimate:.4g} (SE {c.se:.3g})"
        )
    title = args.title or f"{package.manifest.name} {package.manifest.version}"
    report = new_report(title, cox=analysis, notes=notes)
    _write(args.json, report.to_json())
    _write(args.html, render_html(report))
    return ExitCode.SUCCESS


def run_iptw_command(args: argparse.Namespace) -> int:
    _check_common(args)
    if args.average_last is None:
        args.average_last = max(1, min(COX_AVERAGE_LAST, args.rounds))
    _check_rounds(args, COX_MIN_ROUNDS)
    if not 2 <= args.propensity_rounds <= MAX_ROUNDS:
        raise UsageError(f"--propensity-rounds must be between 2 and {MAX_ROUNDS}, got {args.propensity_rounds}")
    federation = load_federation(args.federation)
    package = PlanPackage.from_file(args.plan)
    # Refuses a plan without weighting, or whose model is not Cox, before any site is asked.
    check_weighted(package)
    plan = package.plan
    run_id = args.run_id or f"{federation.name}-iptw-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    balance_sigma = args.noise_multiplier if args.balance_noise_multiplier is None else args.balance_noise_multiplier
    survival_sigma = args.noise_multiplier if args.survival_noise_multiplier is None else args.survival_noise_multiplier
    for option, sigma in (
        ("--balance-noise-multiplier", balance_sigma),
        ("--survival-noise-multiplier", survival_sigma),
    ):
        if not (math.isfinite(sigma) and sigma > 0):
            raise UsageError(f"{option} must be a positive number, got {sigma}")
    planned = [PlannedTask(plan_profile(TaskKind.DP_PROPENSITY, args.noise_multiplier), args.propensity_rounds)]
    planned.append(PlannedTask(plan_profile(TaskKind.DP_DESCRIBE, balance_sigma), 1))
    if plan.survival is not None:
        planned.append(PlannedTask(plan_profile(TaskKind.DP_SURVIVAL, survival_sigma), 1))
    if plan.model is not None:
        planned.append(PlannedTask(plan_profile(TaskKind.DP_GLM, args.noise_multiplier), args.rounds))
    clients = open_clients(federation)

    def stage(name: str) -> None:
        print(f"{name}:", flush=True)

    try:
        _check_budgets(federation, clients, planned)
        analysis = run_iptw(
            federation,
            clients,
            package,
            args.noise_multiplier,
            run_id=run_id,
            propensity_rounds=args.propensity_rounds,
            cox_rounds=args.rounds,
            options=CoxOptions(baseline=CoxBaseline(args.baseline)),
            average_last=args.average_last,
            on_stage=stage,
            on_round=_progress(None),
            balance_noise_multiplier=balance_sigma,
            survival_noise_multiplier=survival_sigma,
        )
    finally:
        for client in clients.values():
            client.close()
    name = f"{package.manifest.name} {package.manifest.version} (run {run_id})"
    notes = _iptw_notes(name, analysis)
    title = args.title or f"{package.manifest.name} {package.manifest.version}"
    report = new_report(title, iptw=analysis, notes=notes)
    # Written even when the study stopped: its stages so far were charged, and the report says
    # what each site did.
    _write(args.json, report.to_json())
    _write(args.html, render_html(report))
    if analysis.stopped:
        raise NoReleaseError(f"the study stopped: {analysis.stopped}")
    return ExitCode.SUCCESS


def _iptw_notes(name: str, analysis: IptwAnalysis) -> list[str]:
    """Prints the study's results and warnings, and why each site left a stage; the report's notes."""
    print(f"iptw of {name}: treatment {analysis.treatment} ({analysis.arms[1]} vs {analysis.arms[0]}), "
          f"estimand {analysis.estimand.upper()}, weights cut at {analysis.max_weight:g}")  # fmt: skip
    notes = [
        f"noise multiplier {analysis.noise_multiplier:g} in every task; the propensity model in "
        f"{len(analysis.propensity.rounds)} rounds.",
        *(f"propensity model: left out {s.site}: {s.status}: {s.detail}" for s in analysis.propensity.sites
          if s.status != "ok"),
    ]  # fmt: skip
    propensity = analysis.propensity.fit
    if propensity is not None and propensity.unreliable:
        notes.append(f"propensity model not to be trusted: {propensity.unreliable}")
        print(f"edge-sponsor: warning: the propensity model: {propensity.unreliable}", file=sys.stderr)
    for stage, sites in (("balance", analysis.balance_sites), ("survival", analysis.survival_sites)):
        for site in sites:
            if site.status != "ok":
                notes.append(f"{stage}: left out {site.site}: {site.status}: {site.detail}")
                print(f"  {stage}: {site.site}: {site.status}: {site.detail}")
    if analysis.stopped:
        notes.append(f"the study stopped: {analysis.stopped}")
    balance = analysis.balance
    if balance is not None:
        for row in balance.rows:
            print(f"  {row.name}: SMD {row.smd_before:+.3f} before, {row.smd_after:+.3f} after weighting")
        beyond = f"|SMD| above {balance.threshold:g} by more than two noise SDs"
        off = [row.name for row in balance.rows if row.imbalanced_after]
        if off:
            notes.append(f"still imbalanced after weighting ({beyond}): {', '.join(off)}")
            print(
                f"edge-sponsor: warning: still imbalanced after weighting ({beyond}): {', '.join(off)}", file=sys.stderr
            )
        unclear = [
            row.name
            for row in balance.rows
            if not row.imbalanced_after and not abs(row.smd_after) <= balance.threshold  # NaN: not estimable
        ]
        if unclear:
            notes.append(
                f"balance after weighting cannot be told from the noise (|SMD| above {balance.threshold:g} within two "
                f"noise SDs, or not estimable): {', '.join(unclear)}; a smaller --balance-noise-multiplier tells more"
            )
    cox_analysis = analysis.cox
    if cox_analysis is not None:
        fit = cox_analysis.fit
        if fit is None:
            notes.append(f"the weighted Cox model was not fitted: {cox_analysis.stopped_early}")
        else:
            for c in fit.original.coefficients:
                print(
                    f"  {c.name}: HR {c.hazard_ratio:.4g} ({c.hazard_ratio_lower:.4g} to {c.hazard_ratio_upper:.4g}); "
                    f"log HR {c.estimate:.4g} (SE {c.se:.3g})"
                )
            if fit.unreliable:
                notes.append(f"weighted Cox model not to be trusted: {fit.unreliable}")
                print(f"edge-sponsor: warning: {fit.unreliable}", file=sys.stderr)
    return notes


def _check_rounds(args: argparse.Namespace, fewest: int = 1) -> None:
    if not fewest <= args.rounds <= MAX_ROUNDS:
        raise UsageError(f"--rounds must be between {fewest} and {MAX_ROUNDS}, got {args.rounds}")
    if not 1 <= args.average_last <= args.rounds:
        raise UsageError(f"--average-last must be between 1 and --rounds ({args.rounds}), got {args.average_last}")


def _progress(rounds: int | None) -> Callable[[GlmRound | CoxRound, Sequence[str]], None]:
    """Prints each round of a dp_glm run as it ends: the sites pooled, the patients, who left.
    ``rounds`` None: a stage of a study whose stages plan different rounds (indented under its name)."""

    def progress(done: GlmRound | CoxRound, left: Sequence[str]) -> None:
        which = f"round {done.index + 1}/{rounds}" if rounds is not None else f"  round {done.index + 1}"
        print(
            f"{which}: {len(done.sites)} sites pooled, "
            f"{done.included:.0f} patients (noisy)" + (f"; left: {', '.join(left)}" if left else ""),
            flush=True,
        )

    return progress


def _model_notes(title: str, analysis: GlmAnalysis | CoxAnalysis, run_words: str) -> list[str]:
    """Prints what each site was charged and the fit's warnings; the report's notes. NoReleaseError
    when no round was completed."""
    print(f"{title}:")
    for site in analysis.sites:
        state = "ok" if site.status == "ok" else f"{site.status}: {site.detail}"
        print(
            f"  {site.site}: {state}; {site.rounds_charged} rounds, ε charged {site.epsilon_charged:.4g} "
            f"(budget spent {site.budget_epsilon_spent:.4g})"
        )
    fit = analysis.fit
    if fit is None:
        raise NoReleaseError(f"no round was completed: {analysis.stopped_early or 'no site returned its sums'}")
    notes = [
        f"{len(fit.sites)} of {len(analysis.sites)} sites in the last round; {len(analysis.rounds)} rounds at noise "
        f"multiplier {analysis.noise_multiplier:g} at each{run_words}"
        + (f"; estimates averaged over the last {fit.averaged_rounds} rounds." if fit.averaged_rounds > 1 else "."),
        *(f"left out {s.site}: {s.status}: {s.detail}" for s in analysis.sites if s.status != "ok"),
    ]
    if analysis.stopped_early:
        notes.append(f"stopped early: {analysis.stopped_early}")
    if analysis.not_converged:
        notes.append(f"may not have converged: {analysis.not_converged}")
        print(f"edge-sponsor: warning: the estimate may not have converged: {analysis.not_converged}", file=sys.stderr)
    if fit.unreliable:
        notes.append(f"not to be trusted: {fit.unreliable}")
        print(f"edge-sponsor: warning: {fit.unreliable}", file=sys.stderr)
    return notes


def _write(path: Path | None, text: str) -> None:
    if path is None:
        return
    write_public(path, text.encode("utf-8"))
    print(f"wrote {path}", file=sys.stdout)
