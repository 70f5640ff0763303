"""The investigators' workbench: server-rendered pages over the case database.

``app`` (routes), ``security`` (session key, login, CSRF, headers), ``evidence`` (the
transactions behind a case), ``flow`` (the money-flow picture as inline SVG), ``server``
(``task=workbench``). Templates and the stylesheet ship in the package; no page loads
anything from elsewhere and none runs a script. See docs/workbench.md.
"""
