"""The classifier stage: the sample-quality classifier trained on the labelled real images
(collapse.classifier), with its figures on the real held-out images to compare samples against."""
from __future__ import annotations

import time

from cluster.stages.context import StageContext
from collapse.classifier import classifier_figures, save_classifier, train_classifier
from collapse.data.importers import labelled_training_images
from collapse.data.samples import SampleSet
from collapse.plan import Stage


def run(ctx: StageContext, stage: Stage) -> None:
    params, t0 = stage.params, time.perf_counter()
    data = labelled_training_images(params["source"], params["images"], size=params["size"], mode=params["mode"],
                                    holdout=params["holdout"], seed=params["seed"],
                                    storage_options=ctx.storage_options)
    if data is None:
        save_classifier(stage.outputs["classifier"], None, {"images": 0}, ctx.storage_options)
        ctx.say(f"classifier: {params['source']} has no labels; sample quality is reported as the on-manifold "
                "ratio only")
        return
    images, labels = data
    clf = train_classifier(images, labels, epochs=params["epochs"], seed=params["seed"])
    _, held_out, _ = SampleSet(ctx.layout.real("holdout"), ctx.storage_options).load()
    held = classifier_figures(clf.probabilities(held_out), clf.num_classes)
    save_classifier(stage.outputs["classifier"], clf, {"images": len(images), "epochs": params["epochs"],
                                                        "holdout": held}, ctx.storage_options)
    ctx.say(f"classifier: {clf.num_classes} classes, {len(images)} labelled real images, "
            f"{time.perf_counter() - t0:.0f} s; on {len(held_out)} held-out real images: confidence "
            f"{held['confidence']:.3f}, rejected {held['rejected']:.3f}")
