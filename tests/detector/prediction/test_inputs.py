"""detector/prediction/inputs.py: files, folders, patterns and file lists -> one ordered list of paths."""

from pathlib import Path

import pytest

from detector.prediction.inputs import expand_inputs, images_in_folder


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """photos/{b.jpg, a.PNG, notes.txt, trip/{c.webp, d.jpeg}, empty/} under the current folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("photos/b.jpg", "photos/a.PNG", "photos/notes.txt", "photos/trip/c.webp", "photos/trip/d.jpeg"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"x")
    Path("photos/empty").mkdir()
    return Path("photos")


def test_a_folder_gives_its_image_files_recursively_sorted(photos):
    assert expand_inputs(["photos"]) == [Path(p) for p in
                                         ("photos/a.PNG", "photos/b.jpg", "photos/trip/c.webp", "photos/trip/d.jpeg")]
    assert images_in_folder(photos / "trip") == [Path("photos/trip/c.webp"), Path("photos/trip/d.jpeg")]


def test_files_patterns_and_lists_mix_in_order_each_path_once(photos):
    Path("todo.txt").write_text("# from elsewhere\nphotos/trip/d.jpeg\n\n  elsewhere/missing.jpg  \n")
    got = expand_inputs(["photos/notes.txt", "photos/*.jpg", "photos/**/*.webp", "photos/b.jpg"], ["todo.txt"])
    assert got == [Path(p) for p in ("photos/notes.txt", "photos/b.jpg", "photos/trip/c.webp",
                                     "photos/trip/d.jpeg", "elsewhere/missing.jpg")]


def test_the_same_arguments_give_the_same_list(photos):
    assert expand_inputs(["photos", "photos/trip/*"]) == expand_inputs(["photos", "photos/trip/*"])


@pytest.mark.parametrize("argument, message", [
    ("photos/nothing/", "photos/nothing/: no such file or folder"),
    ("photos/empty", "photos/empty: no images in this folder (looked for .jpg"),
    ("photos/*.gif", "photos/*.gif: no file matches this pattern"),
])
def test_an_argument_that_names_no_image_says_so(photos, argument, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        expand_inputs(["photos/b.jpg", argument])


def test_a_missing_file_list_and_an_empty_selection_are_errors(photos):
    with pytest.raises(ValueError, match="todo.txt: no such file list"):
        expand_inputs([], ["todo.txt"])
    Path("blank.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no images given"):
        expand_inputs([], ["blank.txt"])
