"""Named, validated configs shipped with fipframe (``fipframe presets``)."""
