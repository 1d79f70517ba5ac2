"""Personalization: a personal adapter from a few photos of one subject, with photo checks,
prior preservation and Hollowed-Net training (``params``, ``photos``, ``hollow``, ``train``,
``metrics``, ``demo``, ``engine``)."""
