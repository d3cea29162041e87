"""What a person sees in a notebook: the forms (widgets), image grids and memory/timing plots (display), sweep grids
(sweep_grid) and the fonts they draw captions with."""
