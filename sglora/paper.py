"""Numbers published in the paper (main text and supplementary), for printing beside ours.

Keys name a paper table; rows map our method ids to the published metrics (percent).
Only what the paper reports is here: missing cells are missing.
"""

def _r6(*values: float) -> dict[str, float]:
    return dict(zip(["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"], values))


PAPER_TABLES: dict[str, dict] = {
    "coco_in_dataset": {
        "title": "SG-LoRA main paper, in-dataset MS-COCO (R@1)",
        "rows": {
            "zero_shot": {"i2t_r1": 66.43, "t2i_r1": 41.66},
            "topk_weighted": {"i2t_r1": 71.55, "t2i_r1": 49.85},
            "sglora": {"i2t_r1": 74.31, "t2i_r1": 54.42, "i2t_r5": 88.78, "i2t_r10": 92.50, "t2i_r5": 75.45, "t2i_r10": 82.18},
            "oracle": {"i2t_r1": 72.45, "t2i_r1": 53.10},
        },
    },
    "pets_in_dataset": {
        "title": "SG-LoRA main paper, in-dataset OxfordPets (R@1)",
        "rows": {
            "zero_shot": {"i2t_r1": 40.45, "t2i_r1": 26.03},
            "topk_weighted": {"i2t_r1": 53.96, "t2i_r1": 35.42},
            "sglora": {"i2t_r1": 57.15, "t2i_r1": 37.62},
            "oracle": {"i2t_r1": 55.84, "t2i_r1": 40.99},
        },
    },
    "pets_to_coco": {
        "title": "SG-LoRA main paper, cross-dataset OxfordPets -> MS-COCO (I2T R@1)",
        "rows": {"topk_weighted": {"i2t_r1": 68.75}, "sglora": {"i2t_r1": 70.81}},
    },
    "coco_to_pets": {
        "title": "SG-LoRA main paper / supp. Table 10, cross-dataset MS-COCO -> OxfordPets",
        "rows": {"topk_weighted": {"i2t_r1": 48.13},
                 "sglora": {"i2t_r1": 55.41, "i2t_r5": 80.73, "i2t_r10": 87.33, "t2i_r1": 38.84, "t2i_r5": 66.77, "t2i_r10": 76.69}},
    },
    "coco_to_flowers": {
        "title": "Supplementary Table 7, cross-dataset MS-COCO -> Flowers102",
        "rows": {
            "zero_shot": dict(i2t_r1=22.30, i2t_r5=53.57, i2t_r10=69.41, t2i_r1=16.33, t2i_r5=46.79, t2i_r10=68.49),
            "oracle": dict(i2t_r1=26.23, i2t_r5=59.17, i2t_r10=77.55, t2i_r1=21.57, t2i_r5=57.56, t2i_r10=80.13),
            "model_soups": dict(i2t_r1=23.50, i2t_r5=54.84, i2t_r10=73.85, t2i_r1=17.23, t2i_r5=50.96, t2i_r10=73.48),
            "adaptersoup": dict(i2t_r1=24.21, i2t_r5=54.26, i2t_r10=72.83, t2i_r1=17.76, t2i_r5=50.93, t2i_r10=73.83),
            "topk_weighted": dict(i2t_r1=23.98, i2t_r5=52.83, i2t_r10=71.91, t2i_r1=17.63, t2i_r5=50.69, t2i_r10=73.74),
            "sglora": dict(i2t_r1=26.83, i2t_r5=56.63, i2t_r10=74.16, t2i_r1=20.52, t2i_r5=53.71, t2i_r10=76.69),
        },
    },
    "cifar100": {
        "title": "Supplementary Table 8, CIFAR-100 superclass classification (accuracy)",
        "rows": {"zero_shot": {"accuracy": 72.30}, "mole": {"accuracy": 56.56}, "model_soups": {"accuracy": 75.63},
                 "adaptersoup": {"accuracy": 72.60}, "topk_weighted": {"accuracy": 72.70}, "sglora": {"accuracy": 77.50}},
    },
    "flickr30k": {
        "title": "Supplementary Table 9, general retrieval on Flickr30K (textual condition)",
        "rows": {"sglora": {"i2t_r1": 86.90, "t2i_r1": 70.66}},
    },
    "coco_seen": {
        "title": "Supplementary Table 13, seen tasks Motorcycle and Sheep (average of the two)",
        "rows": {
            "oracle": dict(i2t_r1=(85.56 + 68.26) / 2, t2i_r1=(68.94 + 41.32) / 2),
            "pdiff": dict(i2t_r1=(85.63 + 66.07) / 2, t2i_r1=(68.83 + 39.28) / 2),
            "cond_pdiff": dict(i2t_r1=(86.30 + 67.98) / 2, t2i_r1=(69.03 + 40.63) / 2),
            "sglora": dict(i2t_r1=(87.74 + 68.26) / 2, t2i_r1=(71.05 + 41.40) / 2),
        },
    },
}

PAPER_TABLES.update({
    "coco_visual_prior": {"title": "Supplementary Table 9, MS-COCO, visual condition",
                          "rows": {"sglora": {"i2t_r1": 73.16, "t2i_r1": 52.70}}},
    "flickr30k_visual_prior": {"title": "Supplementary Table 9, Flickr30K, visual condition",
                               "rows": {"sglora": {"i2t_r1": 86.30, "t2i_r1": 70.12}}},
    "cifar100_visual_prior": {"title": "Supplementary Table 9, CIFAR-100, visual condition",
                              "rows": {"sglora": {"accuracy": 73.83}}},
    "coco_template_bare": {"title": "Supplementary Table 10, MS-COCO, 'A photo of <class name>'",
                           "rows": {"sglora": _r6(74.26, 88.76, 92.28, 54.70, 75.36, 82.12)}},
    "pets_template_bare": {"title": "Supplementary Table 10, cross-dataset OxfordPets, 'A photo of <class name>'",
                           "rows": {"sglora": _r6(55.95, 80.57, 87.61, 38.74, 66.36, 76.13)}},
    "coco_template_the": {"title": "Supplementary Table 10, MS-COCO, 'A photo of the <class name>'",
                          "rows": {"sglora": _r6(74.25, 88.74, 92.46, 54.12, 75.21, 82.14)}},
    "pets_template_the": {"title": "Supplementary Table 10, cross-dataset OxfordPets, 'A photo of the <class name>'",
                          "rows": {"sglora": _r6(55.27, 80.42, 86.97, 38.54, 66.71, 76.42)}},
    "cifar100_template_short": {"title": "Supplementary Table 11, 'A photo of a <superclass name>'",
                                "rows": {"sglora": {"accuracy": 75.77}}},
    "pets_dog_expert": {
        "title": "Supplementary Table 12, w/ Dog expert (average of Pug and Chihuahua)",
        "rows": {"sglora": _r6((46 + 66) / 2, (67 + 90) / 2, (78 + 95) / 2, (32 + 55.25) / 2, (51.75 + 81.25) / 2,
                               (62.75 + 89.75) / 2)},
    },
})
