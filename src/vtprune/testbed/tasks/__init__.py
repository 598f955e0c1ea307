"""Synthetic image and video tasks with known evidence regions (see :mod:`.image`, :mod:`.video`)."""

from vtprune.testbed.tasks.image import IMAGE_TASKS, ImageSample, make_image_sample
from vtprune.testbed.tasks.video import VIDEO_TASKS, VideoSample, make_video_sample

__all__ = ["IMAGE_TASKS", "VIDEO_TASKS", "ImageSample", "VideoSample", "make_image_sample", "make_video_sample"]
