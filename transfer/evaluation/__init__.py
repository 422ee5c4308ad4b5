"""Evaluation of pretrained backbones: conversion (convert), kNN (knn), linear evaluation (linear),
detection transfer with detectron2 (detect, detection_data) and the summary of repeated trials (trials)."""
