"""The known failures and version rules of the FLUX stack, as data (base: knowledge.yaml, parsed and checked), and
the diagnosis of an error against them (diagnosis)."""
