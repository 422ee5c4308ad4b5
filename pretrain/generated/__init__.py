"""The generated datasets, one module each, drawn with one shape generator (`shapes`) and published atomically
(`publish`): the embedded classification set (`embedded`, `simsiam make-data`), its detection twin
(`embedded_detection`) and the ImageNet- and VOC/COCO-shaped rehearsal trees (`rehearsal`)."""
