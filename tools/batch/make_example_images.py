#!/usr/bin/python3
"""Draws the small example pictures of examples/articles/images/ with PIL (simple shapes, so
that the files are a few KB and reproducible): a cat, a dog, mountains in ink, a harbour at
sunset. Run from anywhere: /usr/bin/python3 tools/batch/make_example_images.py"""
import os

from PIL import Image, ImageDraw

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples",
                   "articles", "images")


def cat(d):
    d.rectangle([0, 0, 224, 224], fill=(235, 225, 200))
    d.ellipse([62, 70, 162, 170], fill=(240, 150, 40))                  # head
    d.polygon([(70, 95), (80, 40), (110, 78)], fill=(240, 150, 40))     # ears
    d.polygon([(154, 95), (144, 40), (114, 78)], fill=(240, 150, 40))
    d.ellipse([88, 105, 102, 119], fill=(40, 120, 40))                  # eyes
    d.ellipse([122, 105, 136, 119], fill=(40, 120, 40))
    d.polygon([(106, 130), (118, 130), (112, 138)], fill=(200, 90, 110))  # nose
    for y in (134, 142):                                                # whiskers
        d.line([(60, y - 6), (100, y)], fill=(60, 60, 60), width=2)
        d.line([(124, y), (164, y - 6)], fill=(60, 60, 60), width=2)


def dog(d):
    d.rectangle([0, 0, 224, 224], fill=(170, 210, 150))
    d.ellipse([60, 60, 164, 170], fill=(150, 100, 60))                  # head
    d.ellipse([40, 70, 80, 150], fill=(90, 60, 30))                     # ears
    d.ellipse([144, 70, 184, 150], fill=(90, 60, 30))
    d.ellipse([88, 95, 102, 109], fill=(20, 20, 20))                    # eyes
    d.ellipse([122, 95, 136, 109], fill=(20, 20, 20))
    d.ellipse([98, 125, 126, 145], fill=(20, 20, 20))                   # nose
    d.arc([92, 135, 132, 160], 20, 160, fill=(20, 20, 20), width=3)     # mouth


def mountains(d):
    d.rectangle([0, 0, 224, 224], fill=(245, 242, 232))
    d.polygon([(0, 190), (60, 70), (120, 190)], fill=(60, 60, 60))
    d.polygon([(70, 190), (150, 40), (224, 190)], fill=(30, 30, 30))
    d.polygon([(130, 200), (190, 110), (224, 160), (224, 200)], fill=(110, 110, 110))
    d.rectangle([0, 190, 224, 224], fill=(200, 200, 195))
    d.ellipse([170, 20, 200, 50], fill=(190, 40, 40))                   # a red seal-like sun


def harbour(d):
    for y in range(120):                                                 # sunset sky
        d.line([(0, y), (224, y)], fill=(250, 140 + y // 2, 60 + y))
    d.ellipse([92, 80, 132, 120], fill=(255, 220, 120))
    d.rectangle([0, 120, 224, 224], fill=(30, 70, 120))                  # sea
    d.polygon([(40, 160), (100, 160), (90, 175), (50, 175)], fill=(90, 50, 30))  # boat
    d.line([(70, 160), (70, 120)], fill=(90, 50, 30), width=3)
    d.polygon([(72, 122), (72, 156), (96, 156)], fill=(240, 240, 240))


for name, draw in (("cat", cat), ("dog", dog), ("mountains", mountains), ("harbour", harbour)):
    img = Image.new("RGB", (224, 224))
    draw(ImageDraw.Draw(img))
    img.save(os.path.join(OUT, name + ".png"), optimize=True)
    print(name + ".png")
