"""Context modules and heads shared by several models (ASPP, PAC, FRM, PPM, DAPPM)."""
