"""A local datastore that validates ids, tags, uploaded images and labels before writing anything."""

from __future__ import annotations

import logging
from typing import Any, Dict

from lib.validation import NotFound, check_id, check_label_file, read_header
from monailabel.datastore.local import LocalDatastore

logger = logging.getLogger(__name__)

LABEL_VALUES = {0, 1, 2}


class LiverDatastore(LocalDatastore):
    """:class:`LocalDatastore` that refuses, with a 4xx, what would escape the folder or poison training:

    - image ids and label tags that are not plain names (``../x``, ``a/b``): they would be joined to the datastore
      path as they are;
    - uploaded images that are not readable 3D NIfTI / NRRD volumes;
    - labels whose shape differs from their image's, or with values other than 0, 1, 2;
    - labels or removals for images that do not exist (404).
    """

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        if image_id:
            check_id(image_id, "image id")
        read_header(image_filename, "image")
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        image_uri = self.get_image_uri(image_id)
        if not image_uri:
            raise NotFound(f"image {image_id!r} is not in the datastore")
        check_label_file(label_filename, image_uri, LABEL_VALUES)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_image(self, image_id: str) -> None:
        check_id(image_id, "image id")
        if not self.get_image_uri(image_id):
            raise NotFound(f"image {image_id!r} is not in the datastore")
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_id(label_id, "label id")
        check_id(label_tag, "label tag")
        if not self.get_label_uri(label_id, label_tag):
            raise NotFound(f"no label {label_id!r} with tag {label_tag!r}")
        super().remove_label(label_id, label_tag)

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        check_id(image_id, "image id")
        if not self.get_image_uri(image_id):
            raise NotFound(f"image {image_id!r} is not in the datastore")
        super().update_image_info(image_id, info)
