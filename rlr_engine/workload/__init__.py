"""What is trained and measured: data sets on the device (``data``), models (``models``),
attacks and robustness tables (``attacks``), layer spectra (``spectra``)."""
