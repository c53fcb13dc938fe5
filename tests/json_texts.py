"""Hypothesis strategies for config texts: arbitrary strings and JSON objects written
in every way JSON allows (key order, indentation, escapes, big integers, decimals)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)

json_object_texts = st.builds(
    lambda obj, indent, sort, ascii_only: json.dumps(
        obj, indent=indent, sort_keys=sort, ensure_ascii=ascii_only
    ),
    st.dictionaries(st.text(max_size=5), _VALUES, max_size=4),
    st.sampled_from([None, 0, 2]),
    st.booleans(),
    st.booleans(),
)
"""JSON objects as text."""

config_texts = st.text(max_size=40) | json_object_texts
"""What a maistra.io/v1alpha1 ``config`` string may hold."""
