"""What training shows as it runs (`training.progress`)."""

from autonad_edge.training.progress import Progress


def test_an_epoch_line_gives_val_miou_in_percent_as_the_report_does(capsys):
    """The epoch lines gave val mIoU as a fraction (0.4123) where the report and the search's
    lines give percent; a reader compared 0.41 with 41 %."""
    progress = Progress(3, 10, title="retrain")
    progress.end_epoch({"epoch": 1, "loss": 0.5, "lr": 1e-3, "images_per_s": 80.0, "time": 3.2,
                        "val_miou": 0.41234}, remaining_epochs=2)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("retrain epoch 1/3  loss 0.5000  lr 1.00e-03  80.0 img/s  3.2s  "
                                        "val mIoU 41.2%  epochs ETA ")
