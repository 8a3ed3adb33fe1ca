import pytest

from pipeline.data.vocab import ClassInfo, Vocabulary, VocabularyError, load_packaged_vocabulary, vocabulary_from_names


@pytest.mark.parametrize("stem,n", [("coco_panoptic", 133), ("ade20k_150", 150), ("ade20k_847", 847),
                                    ("pascal_ctx_59", 59), ("pascal_ctx_459", 459), ("mapillary_vistas", 65)])
def test_packaged_vocabularies(stem, n):
    v = load_packaged_vocabulary(stem)
    assert len(v) == n and all(c.synonyms for c in v.classes)


def test_coco_things_and_stuff():
    v = load_packaged_vocabulary("coco_panoptic")
    assert sum(v.thing_mask) == 80


def test_empty_vocabulary_is_an_error():
    with pytest.raises(VocabularyError, match="empty"):
        vocabulary_from_names([" ", ""])


def test_duplicate_names_are_an_error():
    with pytest.raises(VocabularyError, match="duplicate class name 'Cat'"):
        Vocabulary("v", (ClassInfo(0, "cat", True, ("cat",)), ClassInfo(1, "Cat", True, ("cat",))))


def test_free_text_classes_get_coco_panoptic_ids_and_distinct_colours():
    v = vocabulary_from_names(["car", "person", "road", "sky", "grass", "sand"])
    assert [c.id for c in v.classes] == [1, 2, 3, 4, 5, 6]  # COCO panoptic: 0 is unlabeled
    assert len({c.color for c in v.classes}) == 6 and (128, 128, 128) not in {c.color for c in v.classes}
