"""Lines that C libraries under SimpleITK print to the process's standard error themselves."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# MetaIO (MetaImage files) on a damaged file: "MetaImage: M_ReadElementsData: data not read
# completely", then "   ideal = 8000 : actual = 7500".
METAIO_COMPLAINTS = re.compile(rb"^(Meta\w*: .*|\s+ideal = \d+ : actual = \d+)$")
# GDCM tries a JPEG with its 8-bit libjpeg before the 12- and 16-bit ones, which print why they turn
# it down; then the right one decodes it.
GDCM_JPEG_PROBES = re.compile(rb"^(Unsupported JPEG data precision \d+|Invalid SOS parameters for sequential JPEG)$")
# OpenJPEG on a JPEG 2000 stream it cannot decode (the read then fails with GDCM's reason).
OPENJPEG_COMPLAINTS = re.compile(rb"^(Invalid number of tiles : .*|Marker handler function failed to read the marker segment)$")


@contextlib.contextmanager
def native_lines_dropped(always: re.Pattern[bytes] | None = None, on_failure: re.Pattern[bytes] | None = None) -> Iterator[None]:
    """Hold back what the block writes to file descriptor 2 and write it out after it, less the
    lines matching `always`, and those matching `on_failure` when the block raises (the one-line
    error says the same). What other threads (a server's log) printed meanwhile is kept."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            dropped = [pattern for pattern in (always, on_failure if failed else None) if pattern is not None]
            lines = held.read().splitlines(keepends=True)
            os.write(2, b"".join(line for line in lines if not any(p.match(line.rstrip(b"\r\n")) for p in dropped)))


@contextlib.contextmanager
def itk_warnings_off() -> Iterator[None]:
    """ITK's warning display (a process-wide switch) off for the block, then as it was."""
    import SimpleITK as sitk  # only where SimpleITK reads (this module is for any C library)

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
