"""The dream setting a campaign evolves C with, chosen from `worldmodels fidelity`'s summary.json: the highest
Spearman correlation of dream and real returns (rounded to 0.01; ties: the smaller dream - real gap), among the
single-M settings. Prints "TAU DROPOUT".

    python results/fidelity_choice.py RUN/fidelity/summary.json > choice.txt
"""

import json
import sys

settings = [s for s in json.load(open(sys.argv[1]))["settings"] if s["models"] == 1 and s["spearman"] is not None]
best = max(settings, key=lambda s: (round(s["spearman"], 2), -abs(s["gap"])))
print(f'{best["tau"]:g} {best["dropout"]:g}')
