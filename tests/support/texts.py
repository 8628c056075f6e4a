"""Texts where a vectorized measure could part from the per-text code it stands for: curly and straight
apostrophes, hyphens, non-ASCII letters and spaces, capitals, stopwords only, long words, nothing at all."""

TRICKY = [
    "Maya’s allotment: O’Neil's co-op -- 'quoted' --dash- and ‘single’ “double” quotes…",
    "CAFÉ déjà-vu naïve İstanbul ıx ſtraße Kelvin K ﬁne 3.14 1 x 42nd", "the of and a I me my", "", "   ",
    "tab\tnew\nline\u00a0nbsp\u3000ideographic\u2028sep\x1cfs  two  spaces ", "'''--- ’’’ - ' a",
    "Pneumonoultramicroscopicsilicovolcanoconiosis and supercalifragilisticexpialidocious " * 3, "a" * 300 + " b",
    "Dr. Smith met Mr. O’Brien at 10:30 on 2025-03-27 (see [Data: Reports (3)]) in chunk-garden.",
]
