"""The ``hwcost`` command line. Thin: each command opens the store, calls one library
function and formats its result. Heavy packages are imported inside commands."""
