"""The agent's mind: Yan model (`agents.yan`), stacked populations (`agents.population`) and the
online continual learner (`agents.learner`).

Importing this package stays cheap (no torch): `agents.config` is read by scenario validation.
Import the submodules that need torch directly.
"""
