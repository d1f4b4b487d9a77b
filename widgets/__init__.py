"""The Jupyter layer: one state store and the widgets that observe it."""
from widgets.budget import BudgetSlider
from widgets.budget_explorer import BudgetExplorer
from widgets.frontier import FrontierView
from widgets.lab import Lab
from widgets.runner import Runner
from widgets.state import LabState
from widgets.tokens import CurveView, ExitMapView, SpecStreamView

__all__ = ["BudgetExplorer", "BudgetSlider", "CurveView", "ExitMapView", "FrontierView", "Lab", "LabState", "Runner", "SpecStreamView"]
