__version__ = "0.1.0"

import time as _time

# When the package began importing (this module is its first import): a file of the package
# last modified before then is the text of the code that runs (parsing._unchanged_since_import).
IMPORTED_NS = _time.time_ns()
