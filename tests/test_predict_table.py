"""flowerft predict's table: paths read whole (relative to the current folder, wrapped only after a "/")."""

import io

from rich.console import Console

from flowerft.cli.predict_command import prediction_table
from flowerft.serving.predict import Prediction

TOP = [{"label": "dandelion", "probability": 0.91}, {"label": "roses", "probability": 0.05}, {"label": "tulips", "probability": 0.01}]


def rendered(predictions, width=80) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width).print(prediction_table(predictions, 3))
    return out.getvalue().splitlines()


def image_column(lines: list[str]) -> list[str]:
    return [line.split("│")[1].strip() for line in lines if line.startswith("│")]


def test_a_long_path_wraps_only_after_a_slash_and_is_relative_to_the_current_folder(tmp_path):
    nested = tmp_path / "photos" / "holiday 2024" / "a rather long folder name" / "dogs and cats"
    path = nested / "my_dog_in_the_garden_2024.jpg"
    cells = image_column(rendered([Prediction(str(path), TOP)]))
    assert len(cells) > 1  # it did not fit in one line
    assert all(cell.endswith("/") for cell in cells[:-1])  # every break is after a "/"
    assert "".join(cells) == "photos/holiday 2024/a rather long folder name/dogs and cats/my_dog_in_the_garden_2024.jpg"


def test_a_path_outside_the_current_folder_stays_as_given_and_fits_when_it_can(tmp_path):
    path = "/srv/data/flowers/daisy/123.jpg"
    assert image_column(rendered([Prediction(path, TOP)], width=120)) == [path]
    cells = image_column(rendered([Prediction("/srv/" + "x" * 70 + ".jpg", TOP)]))
    assert "".join(cells) == "/srv/" + "x" * 70 + ".jpg"  # a name wider than the column is still cut, nothing lost
