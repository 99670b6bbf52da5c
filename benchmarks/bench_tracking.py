"""How often objects keep their id over time: a synthetic time-lapse of moving, touching nuclei.

    .venv/bin/python benchmarks/bench_tracking.py [--frames 30] [--objects 24] [--speed 3] [--seed 0] [--json]

A (T, Y, X) sequence of round blobs of radius 9-12 px packed so that many touch, each drifting at up to
--speed px per frame with a random turn every frame; a step into another blob or out of the image is not
taken (the blob turns back), so blobs touch but never overlap, as nuclei do; ground-truth ids are known.
Rendered as a fluorescence image (blurred, Poisson-like noise), segmented with the shipped `nuclei` model by
napari_unet.predict(..., output="instances") frame by frame (stack=None: ids restart in every frame) and
linked (stack="t": stacks.link_frames, Hungarian matching on IoU >= 0.25). The linking alone is also scored
on the true objects with their ids shuffled in every frame.

Score: the share of true object-frame transitions (an object present in frames t-1 and t) whose predicted id
is kept: the object is found in both frames (a predicted object with IoU > 0.5) with the same id. "Of the
found" divides by the transitions where the object was found in both frames (the linking's own share).

Measured (`.venv/bin/python benchmarks/bench_tracking.py --speed S`, 30 frames, 24 blobs, 696 transitions;
about 10 s each on a shared 2-CPU machine):

    speed up to (px/frame)            3      6      12
    object-frames touching another    36 %   28 %   17 %
    nuclei model, frame by frame      0.825  0.747  0.591   (raster-order ids that happen to stay)
    nuclei model, linked (stack='t')  1.000  1.000  0.872
    true objects, linked              1.000  1.000  0.871   (true objects, ids shuffled: 0.042)

The model found every object in both frames (696 of 696 at each speed), so the misses at 12 px/frame are the
linking's: a blob of radius 9 that moves 12 px overlaps its last position by less than IoU 0.25, and overlap
linking has nothing to go on (a tracker with motion prediction would be the next step).
"""

from __future__ import annotations

import argparse
import json
import os


def blob_sequence(n_frames: int, n_objects: int, speed: float, seed: int, shape=(256, 256)):
    """(T, Y, X) int32 truth ids 1..n_objects and the uint16 fluorescence image of them."""
    import numpy as np
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    radii = rng.uniform(9, 12, n_objects)
    side = int(np.ceil(np.sqrt(n_objects)))
    spacing = 2 * radii.max()  # the biggest neighbours on the grid touch
    origin = (np.asarray(shape) - spacing * (side - 1)) / 2
    grid = np.array([(origin[0] + spacing * (i // side), origin[1] + spacing * (i % side)) for i in range(n_objects)])
    positions = grid.astype(np.float64)
    headings = rng.uniform(0, 2 * np.pi, n_objects)
    speeds = rng.uniform(0.3, 1.0, n_objects) * speed
    brightness = rng.uniform(0.6, 1.0, n_objects)
    yy, xx = np.indices(shape)
    truth = np.zeros((n_frames, *shape), dtype=np.int32)
    images = np.zeros((n_frames, *shape), dtype=np.uint16)
    for t in range(n_frames):
        signal = np.zeros(shape, dtype=np.float32)
        for k in range(n_objects):
            inside = (yy - positions[k, 0]) ** 2 + (xx - positions[k, 1]) ** 2 <= radii[k] ** 2
            truth[t][inside] = k + 1
            signal[inside] = brightness[k]
        blurred = ndi.gaussian_filter(signal, 1.5) * 800 + 100
        images[t] = np.clip(rng.poisson(blurred) + rng.normal(0, 10, shape), 0, 65535).astype(np.uint16)
        headings += rng.normal(0, 0.4, n_objects)
        for k in range(n_objects):  # one at a time: a step into another blob or out of the image is not taken
            moved = positions[k] + speeds[k] * np.array([np.sin(headings[k]), np.cos(headings[k])])
            gaps = np.hypot(*(positions - moved).T) - (radii + radii[k])
            gaps[k] = np.inf
            inside = np.all((moved >= radii[k]) & (moved <= np.asarray(shape) - 1 - radii[k]))
            if inside and gaps.min() >= -1:  # touching (up to 1 px) is allowed, overlapping is not
                positions[k] = moved
            else:
                headings[k] += np.pi  # turn back
    return truth, images


def touching_share(truth) -> float:
    """The share of object-frames whose object touches another (a pixel of another object within 1 px)."""
    import numpy as np
    from scipy import ndimage as ndi

    touching = total = 0
    for frame in truth:
        highest = ndi.maximum_filter(frame, size=3)
        lowest = ndi.minimum_filter(np.where(frame == 0, frame.max() + 1, frame), size=3)
        near_other = (frame > 0) & ((highest > frame) | (lowest < frame))
        ids = np.unique(frame[frame > 0])
        total += ids.size
        touching += np.unique(frame[near_other]).size
    return touching / total


def matched_ids(truth_frame, predicted_frame) -> dict[int, int]:
    """Each true object's predicted id, where one predicted object covers it with IoU > 0.5."""
    import numpy as np

    from napari_unet.scoring.metrics import instance_ious

    truth_ids = np.unique(truth_frame[truth_frame > 0])
    predicted_ids = np.unique(predicted_frame[predicted_frame > 0])
    if not truth_ids.size or not predicted_ids.size:
        return {}
    ious = instance_ious(truth_frame, predicted_frame)  # rows, columns: the sorted ids above
    found = {}
    for row, column in zip(*np.nonzero(ious > 0.5)):
        found[int(truth_ids[row])] = int(predicted_ids[column])
    return found


def kept_share(truth, predicted) -> dict:
    """Transitions whose id is kept, over all true transitions and over those found in both frames."""
    import numpy as np

    transitions = kept = found_both = 0
    previous = matched_ids(truth[0], predicted[0])
    for t in range(1, len(truth)):
        current = matched_ids(truth[t], predicted[t])
        present = set(np.unique(truth[t - 1][truth[t - 1] > 0]).tolist()) & set(np.unique(truth[t][truth[t] > 0]).tolist())
        for object_id in present:
            transitions += 1
            if object_id in previous and object_id in current:
                found_both += 1
                kept += previous[object_id] == current[object_id]
        previous = current
    return {"transitions": transitions, "kept": kept, "found_in_both": found_both,
            "kept_share": round(kept / transitions, 3) if transitions else None,
            "kept_share_of_found": round(kept / found_both, 3) if found_both else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--speed", type=float, default=3.0, help="largest drift per frame in px (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from napari_unet import load_model, predict
    from napari_unet.labels.stacks import link_frames

    truth, images = blob_sequence(args.frames, args.objects, args.speed, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    shuffled = np.zeros_like(truth)
    for t in range(len(truth)):  # the true objects, numbered in a new order in every frame
        new_ids = np.concatenate([[0], rng.permutation(args.objects) + 1])
        shuffled[t] = new_ids[truth[t]]
    model = load_model("nuclei")
    rows = {
        "true objects, ids shuffled per frame": kept_share(truth, shuffled),
        "true objects, linked": kept_share(truth, link_frames(shuffled)),
        "nuclei model, frame by frame": kept_share(truth, predict(model, images, output="instances")),
        "nuclei model, linked (stack='t')": kept_share(truth, predict(model, images, output="instances", stack="t")),
    }
    if args.json:
        print(json.dumps({"frames": args.frames, "objects": args.objects, "speed": args.speed,
                          "touching_share": round(touching_share(truth), 3), "rows": rows}))
        return
    print(f"{args.frames} frames of {args.objects} moving, touching blobs (speed up to {args.speed:g} px/frame), "
          f"{rows['true objects, linked']['transitions']} true transitions, "
          f"{touching_share(truth):.0%} of the object-frames touching another blob")
    for name, row in rows.items():
        print(f"  {name:<40} ids kept {row['kept_share']:.3f}  (of the found: {row['kept_share_of_found']:.3f}, "
              f"{row['found_in_both']} found)")


if __name__ == "__main__":
    main()
