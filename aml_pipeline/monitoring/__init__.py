"""Monitoring a deployed bundle: drift against its reference, performance as labels mature.

- :mod:`.distances`: PSI and Jensen-Shannon distance of two histograms;
- :mod:`.histograms`: the bins (quantile edges fitted on the reference) and counting on them;
- :mod:`.reference`: the reference histograms a bundle keeps from its validation window;
- :mod:`.window`: a scored window read from ``task=score`` output, decision logs or the
  streaming scorer's decisions;
- :mod:`.drift`: each column and the score of a window judged against the reference;
- :mod:`.volume`: alert volume and rate per day and per jurisdiction;
- :mod:`.labels`: which events' labels are mature, and performance over those only;
- :mod:`.agreement`: a shadow bundle's alerts and ranks against the live one's;
- :mod:`.report`: the plots and the self-contained HTML page.
"""
