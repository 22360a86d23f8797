"""The typer application objects that command modules attach to."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vqa-ood-bench",
    help="Robust fine-tuning benchmark for VQA: fine-tune, predict, score ID / near-OOD / far-OOD splits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command groups; modules named cmd_*.py in this package add commands to them.
datasets_app = typer.Typer(help="List the known datasets and check files on disk.", no_args_is_help=True)
plot_app = typer.Typer(help="Draw figures from run folders.", no_args_is_help=True)
leaderboard_app = typer.Typer(help="Show, add, export and render leaderboard entries.", no_args_is_help=True)
model_app = typer.Typer(help="The shipped tiny foundation model: check it, rebuild it.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(model_app, name="model")
app.add_typer(plot_app, name="plot")
app.add_typer(leaderboard_app, name="leaderboard")
