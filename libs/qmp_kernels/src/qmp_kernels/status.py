"""Status codes returned by every kernel instead of raising (exceptions do not belong in a hot loop).

A kernel that cannot produce a number returns NaN in its place together with a non-zero code; callers
turn the code into a business status (e.g. a RiskSnapshot's `insufficient_data`) or a startup error.
"""

OK = 0
INSUFFICIENT_DATA = 1  # fewer valid observations than the computation needs
INVALID_ARGUMENT = 2  # a parameter is out of range: level outside (0, 1), window < 1, ...
INVALID_INPUT = 3  # the data break the input contract: unsorted timestamps, non-positive peak equity, ...
UNBOUNDED = 4  # the fitted model has no finite answer: a GPD tail with shape >= 1 has no mean (no ES)

NAMES = {OK: "ok", INSUFFICIENT_DATA: "insufficient_data", INVALID_ARGUMENT: "invalid_argument",
         INVALID_INPUT: "invalid_input", UNBOUNDED: "unbounded"}
