"""The bottom layer: what every other package uses (the user-error type, atomic files, the artifact
cache's paths, child processes that die with their parent, checks of user input). It imports nothing
else of the project, so imports run one way: plumbing <- fixtures <- strategies <- bench <- reports
(tests/test_layers.py walks them)."""
