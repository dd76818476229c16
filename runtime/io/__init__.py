"""Files in and out: images read with a pixel limit from their header (``images``), videos and
cameras (``video``), atomic writes and staging folders (``files``), bundled sample photographs
(``samples``)."""
